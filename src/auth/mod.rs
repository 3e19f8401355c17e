//! Login state: who is logged in, where to send them back, and who is an admin.

pub mod identity;
pub mod logout_tokens;
pub mod oidc;
pub mod refresh;
pub mod revocation;
pub mod tokens;

use crate::configuration::Settings;
use identity::AuthState;

/// `/login?return_to=…` for a path already known to be safe.
pub fn login_url(return_to: &str) -> String {
    provider_login_url(None, return_to)
}

/// `/login?provider=…&return_to=…`: straight to one provider (`None`: the chooser, or the
/// one provider). `return_to` is kept only if it is a safe path other than `/`.
pub fn provider_login_url(provider: Option<&str>, return_to: &str) -> String {
    let safe = safe_return_to(Some(return_to));
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(id) = provider {
        query.append_pair("provider", id);
    }
    if safe != "/" {
        query.append_pair("return_to", &safe);
    }
    match query.finish() {
        q if q.is_empty() => "/login".to_owned(),
        q => format!("/login?{q}"),
    }
}

/// Accepts only same-site relative paths (`/cart`, `/products/x?y=1`); anything that a browser
/// could read as another origin (`//host`, `/\host`, `https://…`, `javascript:`, control
/// characters, encoded variants) falls back to `/`.
pub fn safe_return_to(candidate: Option<&str>) -> String {
    let Some(path) = candidate else {
        return "/".to_owned();
    };
    let ok = path.starts_with('/')
        && path.len() <= 2048
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && !contains_encoded_separator(path)
        && url::Url::parse("http://shop.invalid")
            .and_then(|base| base.join(path))
            .is_ok_and(|u| u.host_str() == Some("shop.invalid") && u.scheme() == "http");
    if ok { path.to_owned() } else { "/".to_owned() }
}

/// `%2f`, `%5c` and percent-encoded control characters right after the leading slash would
/// turn into `//host` or `/\host` once some proxy or framework decodes them.
fn contains_encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%5c")
        || lower.starts_with("/%2f")
        || lower.starts_with("/%09")
        || lower.starts_with("/%0a")
        || lower.starts_with("/%0d")
        || lower.contains("%00")
}

/// An admin is named by group, subject or email in the `[admin]` settings; by email only
/// when the provider vouches for it (`email_verified`); and only through a provider
/// `admin.providers` names, when there are several.
pub fn is_admin(settings: &Settings, auth: &AuthState) -> bool {
    grants_admin(
        settings,
        &auth.issuer,
        &auth.subject,
        auth.email.as_deref(),
        auth.email_verified,
        &auth.groups,
    )
}

/// The admin rule on a login's parts: signed in at a provider admins may use, and a group,
/// the subject, or a verified email.
pub fn grants_admin(
    settings: &Settings,
    issuer: &str,
    subject: &str,
    email: Option<&str>,
    email_verified: bool,
    groups: &[String],
) -> bool {
    let admins = &settings.admin;
    settings.admins_may_sign_in_at(issuer)
        && (groups.iter().any(|g| admins.groups.contains(g))
            || admins.subjects.iter().any(|s| s == subject)
            || (email_verified
                && email.is_some_and(|e| admins.emails.iter().any(|a| a.eq_ignore_ascii_case(e)))))
}

#[cfg(test)]
mod tests {
    use super::safe_return_to;

    #[test]
    fn only_same_site_paths_are_kept() {
        for good in ["/", "/cart", "/products/red-mug?x=1#top", "/orders/%20x"] {
            assert_eq!(safe_return_to(Some(good)), good, "{good}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "javascript:alert(1)",
            "/%2f%2fevil.example",
            "/%5cevil.example",
            "/\tevil",
            "evil",
            "",
            "http:/evil",
            "/%09/evil.example",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_return_to(None), "/");
    }

    mod properties {
        use super::safe_return_to;
        use proptest::prelude::*;

        /// Where a browser would go from a page on `http://shop.invalid/…` given `location`.
        fn destination_host(location: &str) -> Option<String> {
            url::Url::parse("http://shop.invalid/some/page")
                .unwrap()
                .join(location)
                .unwrap()
                .host_str()
                .map(str::to_owned)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn whatever_comes_in_the_result_stays_on_the_site(input in any::<String>()) {
                let out = safe_return_to(Some(&input));
                prop_assert!(out.starts_with('/'));
                prop_assert!(!out.starts_with("//") && !out.contains('\\'));
                prop_assert!(!out.chars().any(char::is_control));
                let host = destination_host(&out);
                prop_assert_eq!(host.as_deref(), Some("shop.invalid"));
                // Idempotent: a sanitised path is accepted as it is.
                prop_assert_eq!(safe_return_to(Some(&out)), out);
            }

            #[test]
            fn url_like_inputs_never_leave_the_site(
                scheme in prop::sample::select(vec!["", "http:", "https:", "javascript:", "//", "/\\", "\\\\", "/%2f", "/%5c"]),
                host in "[a-z.]{1,20}",
                rest in "[ -~]{0,40}",
            ) {
                let input = format!("{scheme}{host}/{rest}");
                let out = safe_return_to(Some(&input));
                let host = destination_host(&out);
                prop_assert_eq!(host.as_deref(), Some("shop.invalid"), "{} -> {}", input, out);
            }

            #[test]
            fn ordinary_paths_are_kept(path in "(/[a-z0-9_-]{1,12}){1,4}(\\?[a-z]{1,5}=[a-z0-9]{0,8})?") {
                prop_assert_eq!(safe_return_to(Some(&path)), path);
            }
        }
    }
}
