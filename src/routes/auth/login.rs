use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;

use serde::Serialize;

use super::provider_error;
use crate::auth::identity::StepUp;
use crate::auth::oidc::OidcError;
use crate::auth::{login_url, provider_login_url, safe_return_to};
use crate::error::{AppError, Result};
use crate::routes::identity::same_site_referer;
use crate::routes::page::page_layout;
use crate::routes::page::render;
use crate::routes::respond::{NoStore, found, see_other};
use crate::session::TypedSession;
use crate::state::State;

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    /// `1`: a re-authentication before a large order (`checkout.step_up_*`), also for a
    /// shopper who is logged in.
    #[serde(default)]
    step_up: Option<String>,
    /// `[[oidc.providers]] id`: which provider to sign in with (a chooser without it, when
    /// there are several).
    provider: Option<String>,
}

#[derive(Serialize)]
struct ChooserPage {
    providers: Vec<ChoiceLink>,
}

#[derive(Serialize)]
struct ChoiceLink {
    id: String,
    name: String,
    url: String,
}

#[derive(Serialize)]
struct LoginAgainPage {
    login_url: String,
}

/// Sends the browser to the provider with a fresh `state`, `nonce` and PKCE S256 challenge.
#[tracing::instrument(name = "Start login", skip_all)]
pub async fn start_login(
    state: State,
    session: TypedSession,
    req: HttpRequest,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse> {
    // Without `return_to` (the header's "Log in" link), come back to the page the link was
    // on, if the browser says it was one of ours.
    let here = query
        .return_to
        .clone()
        .or_else(|| same_site_referer(&req, &state.settings.server.public_url));
    let return_to = safe_return_to(here.as_deref());
    match session.auth() {
        // Ended at the provider, or its provider is no longer offered.
        Some(auth) if auth.needs_login() || state.providers.by_issuer(&auth.issuer).is_none() => {
            // Say why before sending the shopper away; the next click starts the login.
            session.forget_login();
            let layout = page_layout(&state, &session);
            let page = LoginAgainPage {
                login_url: login_url(&return_to),
            };
            return Ok(render(&state.tera, "auth/login_again.html", &layout, page)?.with_no_store());
        }
        Some(_) if query.step_up.is_none() => return Ok(see_other(&return_to)),
        _ => {}
    }
    let step_up = query.step_up.is_some().then(|| StepUp {
        max_age_secs: state.settings.checkout.step_up_max_age_secs,
        acr_values: state.settings.checkout.step_up_acr_values.clone(),
    });
    let providers = &state.providers;
    // A step-up confirms the login at hand, so it goes to that login's provider.
    let chosen = match (
        session.auth().filter(|_| step_up.is_some()),
        &query.provider,
    ) {
        (Some(auth), _) => providers.by_issuer(&auth.issuer),
        (None, Some(id)) => Some(providers.by_id(id).ok_or_else(|| {
            AppError::BadRequest(format!(
                "There is no sign-in provider called “{}” here.",
                id.chars().take(40).collect::<String>()
            ))
        })?),
        (None, None) if providers.several() => {
            let layout = page_layout(&state, &session);
            let page = ChooserPage {
                providers: providers
                    .all()
                    .iter()
                    .map(|p| {
                        let url = provider_login_url(Some(p.id()), &return_to);
                        ChoiceLink {
                            id: p.id().to_owned(),
                            name: p.display_name().to_owned(),
                            // Asked for while logged out: the sign-in still asks the provider
                            // for the recent authentication (and `acr`) a large order needs.
                            url: match step_up {
                                Some(_) => format!("{url}&step_up=1"),
                                None => url,
                            },
                        }
                    })
                    .collect(),
            };
            return Ok(render(&state.tera, "auth/choose.html", &layout, page)?.with_no_store());
        }
        (None, None) => Some(providers.first()),
    };
    let oidc = chosen.ok_or_else(|| {
        AppError::BadRequest(
            "The provider of this sign-in is no longer offered; please log in again.".into(),
        )
    })?;
    let (url, pending) = oidc
        .authorization_request(return_to, step_up)
        .await
        .map_err(|e| match e {
            // Refused before any code exists: the provider rejects the request itself (PAR).
            OidcError::Refused { .. } => {
                tracing::warn!(provider = %oidc.id(), error = %e, "The provider refused the authorization request");
                AppError::BadGateway(
                    "The identity provider refused to start the sign-in. Please try again later."
                        .into(),
                )
            }
            other => provider_error(other),
        })?;
    session
        .begin_login(pending)
        .map_err(|e| AppError::Unexpected(e.into()))?;
    Ok(found(url.as_str()))
}
