use actix_web::HttpResponse;
use serde_json::json;

use crate::state::State;

/// `GET /.well-known/jwks.json`: the public halves of `oidc.client_keys`, for providers that
/// fetch the keys of a `private_key_jwt` client from a `jwks_uri` (all of them, so an assertion
/// signed with a key being rotated in or out still verifies). Empty without client keys.
pub async fn client_jwks(state: State) -> HttpResponse {
    let keys: Vec<serde_json::Value> = state
        .settings
        .oidc
        .client_keys
        .iter()
        .map(|k| k.public_jwk())
        .collect();
    HttpResponse::Ok()
        .content_type("application/jwk-set+json")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(json!({ "keys": keys }))
}
