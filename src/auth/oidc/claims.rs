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

/// Claims beyond the standard ones: the groups the admin check reads and the provider session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShopClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}
impl AdditionalClaims for ShopClaims {}

/// The extra claims of an OIDC Back-Channel Logout token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogoutClaims {
    #[serde(default)]
    pub events: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub nonce: Option<serde_json::Value>,
}
impl AdditionalClaims for LogoutClaims {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevocationMetadata {
    pub revocation_endpoint: Option<RevocationUrl>,
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
pub(super) type LogoutToken = IdToken<
    LogoutClaims,
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
