//! Logging in through the real local provider (`idp/`) the way a browser does: the shop's
//! `/login`, the provider's redirects and login form, back to the shop's `/callback`. Shared
//! by the integration tests and the benchmarks.

use reqwest::Url;

fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .expect("an ASCII Location")
}

/// Follows the provider's redirects with its own cookie jar, logging in with the form when
/// asked, until the provider sends the browser back to the shop (`shop` is its base URL).
/// Returns the URL on the shop it was sent to (the `/callback?code=…` address).
pub async fn through_provider(
    provider: &reqwest::Client,
    start: &str,
    shop: &str,
    user: &str,
) -> String {
    let mut url = Url::parse(start).unwrap();
    for _ in 0..10 {
        if url.as_str().starts_with(shop) {
            return url.to_string();
        }
        let response = provider.get(url.clone()).send().await.unwrap();
        if response.status().is_redirection() {
            url = url.join(location(&response)).unwrap();
            continue;
        }
        assert_eq!(response.status().as_u16(), 200, "at {url}");
        let html = response.text().await.unwrap();
        assert!(html.contains("id=\"login\""), "a login form at {url}");
        let action = url.join(&format!("{}/login", url.path())).unwrap();
        let response = provider
            .post(action)
            .form(&[("login", user), ("password", &format!("{user}-password"))])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303, "login accepted");
        url = url.join(location(&response)).unwrap();
    }
    panic!("the provider never sent the browser back");
}

/// A browser's cookie jar that does not follow redirects.
pub fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

/// A complete login as `user`: `shop_client` keeps the shop's cookies, `provider` the
/// provider's. Returns where the callback sent the browser.
pub async fn log_in(
    shop_client: &reqwest::Client,
    provider: &reqwest::Client,
    shop: &str,
    return_to: &str,
    user: &str,
) -> String {
    let response = shop_client
        .get(format!("{shop}/login"))
        .query(&[("return_to", return_to)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        302,
        "login redirects to the provider"
    );
    let back = through_provider(provider, location(&response), shop, user).await;
    let callback = shop_client.get(&back).send().await.unwrap();
    assert_eq!(callback.status().as_u16(), 303, "callback completes");
    location(&callback).to_owned()
}
