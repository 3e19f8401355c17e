//! The claim and metadata types the shop reads from its provider, and the `openidconnect`
//! type aliases built from them.

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, Client, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IdToken, IdTokenClaims, IdTokenFields, LogoutProviderMetadata,
    ProviderMetadata, RevocationUrl, StandardErrorResponse, StandardTokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};

/// Claims beyond the standard ones: the provider session, and every other claim as it came,
/// for the groups claim the configuration names (`oidc.groups_claim`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShopClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl ShopClaims {
    /// The groups at `path`: a claim of that exact name (Auth0's namespaced
    /// `https://shop.example/roles`), else a dotted path into nested objects (Keycloak's
    /// `realm_access.roles`). A list of strings, or one string; `None` when absent.
    pub fn groups_at(&self, path: &str) -> Option<Vec<String>> {
        let value = self.other.get(path).or_else(|| {
            let mut parts = path.split('.');
            let first = self.other.get(parts.next()?)?;
            parts.try_fold(first, |v, part| v.get(part))
        })?;
        match value {
            serde_json::Value::String(one) => Some(vec![one.clone()]),
            serde_json::Value::Array(many) => Some(
                many.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        }
    }
}
impl AdditionalClaims for ShopClaims {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevocationMetadata {
    pub revocation_endpoint: Option<RevocationUrl>,
    /// RFC 9207: the provider puts `iss` in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// RFC 9126: where authorization requests are pushed, and whether the provider takes
    /// them only that way.
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<url::Url>,
    #[serde(default)]
    pub require_pushed_authorization_requests: Option<bool>,
}
impl AdditionalProviderMetadata for RevocationMetadata {}

pub(super) type Metadata = ProviderMetadata<
    LogoutProviderMetadata<RevocationMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
pub(super) type ShopIdToken = IdToken<
    ShopClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type ShopIdTokenClaims = IdTokenClaims<ShopClaims, CoreGenderClaim>;
pub type ShopUserInfo = UserInfoClaims<ShopClaims, CoreGenderClaim>;
pub(super) type ShopTokenResponse = StandardTokenResponse<
    IdTokenFields<
        ShopClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;
pub(super) type ShopClient = Client<
    ShopClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    ShopTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The claims of a JWT this shop verified when it received it (a stored ID token), read again
/// for display. Not a verification: never call it on a token from outside.
pub fn stored_token_claims(raw: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine as _;
    let payload = raw.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::ShopClaims;

    fn claims(json: serde_json::Value) -> ShopClaims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn groups_come_from_the_configured_claim_wherever_it_is() {
        let keycloak = claims(serde_json::json!({"realm_access": {"roles": ["admins", "staff"]}}));
        assert_eq!(
            keycloak.groups_at("realm_access.roles").unwrap(),
            ["admins", "staff"]
        );
        let auth0 = claims(serde_json::json!({"https://shop.example/roles": ["admins"]}));
        assert_eq!(
            auth0.groups_at("https://shop.example/roles").unwrap(),
            ["admins"]
        );
        let entra = claims(serde_json::json!({"roles": "admins"}));
        assert_eq!(entra.groups_at("roles").unwrap(), ["admins"]);
        assert_eq!(entra.groups_at("groups"), None, "absent");
        assert_eq!(keycloak.groups_at("realm_access.missing"), None);
    }
}
