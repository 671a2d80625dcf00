//! HS512 JSON Web Tokens shaped like those Truedat's td-auth (Guardian/Joken) issues.
//!
//! Enough to mint real, signed tokens in the fake Truedat and to check them the way
//! Truedat's services do (signature, then `exp`/`nbf`), without pulling in a JWT crate.
//! Tests also use [`decode_unverified`] to look inside the tokens the proxy receives.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha512;

type HmacSha512 = Hmac<Sha512>;

/// The only header td-auth ever emits; anything else is rejected on verification,
/// which also shuts the door on `alg: none` tokens.
const HEADER: &str = r#"{"alg":"HS512","typ":"JWT"}"#;

/// Joken's default `jti`: 15 random bytes in unpadded lower-case base32hex, i.e. 24 of these.
const JTI_ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
const JTI_LEN: usize = 24;

/// The claims td-auth puts in access tokens (and, with another `aud`, in refresh tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `"truedat"` for access tokens; services reject other audiences as unauthenticated.
    pub aud: String,
    /// Always `"tdauth"`.
    pub iss: String,
    /// Issue time, whole seconds since the Unix epoch.
    pub iat: u64,
    /// Not-before time; td-auth sets it to `iat`.
    pub nbf: u64,
    /// Expiry, whole seconds since the Unix epoch.
    pub exp: u64,
    /// Session id: the key of the server-side allowlist, so it is what revocation removes.
    pub jti: String,
    /// A JSON document *serialized as a string*, e.g. `"{\"id\":42,\"user_name\":\"svc\"}"`.
    pub sub: String,
    /// The user the session belongs to.
    pub user_name: String,
    /// `admin`, `user`, `service` or `agent`.
    pub role: String,
    /// Group names; empty for the service user.
    pub groups: Vec<String>,
}

impl Claims {
    /// Claims for `user_name` valid from `iat` until `exp`, with a fresh random `jti`.
    pub fn new(aud: &str, user_name: &str, iat: u64, exp: u64) -> Claims {
        Claims {
            aud: aud.to_owned(),
            iss: "tdauth".to_owned(),
            iat,
            nbf: iat,
            exp,
            jti: new_jti(),
            sub: serde_json::json!({ "id": 42, "user_name": user_name }).to_string(),
            user_name: user_name.to_owned(),
            role: "service".to_owned(),
            groups: Vec::new(),
        }
    }
}

/// Why a token failed verification; Truedat's services answer all of these with
/// `{"message":"invalid_token"}`, the distinction only helps debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts, not JSON, or not an HS512 header.
    Malformed,
    /// Signed with another key, or tampered with.
    BadSignature,
    /// `exp` is not after the current second.
    Expired,
    /// `nbf` is after the current second.
    NotYetValid,
}

/// A random session id in td-auth's format: 24 lowercase base32hex characters.
pub fn new_jti() -> String {
    let mut rng = rand::rng();
    (0..JTI_LEN).map(|_| char::from(JTI_ALPHABET[rng.random_range(0..JTI_ALPHABET.len())])).collect()
}

/// Signs `claims` with HMAC-SHA512 under `secret`, in compact serialization.
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let payload = serde_json::to_vec(claims).expect("Claims holds only strings and integers");
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(payload));
    let signature = mac(secret).chain_update(signing_input.as_bytes()).finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Checks the signature and the validity window at `now` (whole Unix seconds), as
/// Guardian does: valid while `nbf <= now < exp`.
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Claims, JwtError> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
    check_header(header)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| JwtError::Malformed)?;
    mac(secret).chain_update(signing_input.as_bytes()).verify_slice(&signature).map_err(|_| JwtError::BadSignature)?;
    let claims = decode_payload(payload).ok_or(JwtError::Malformed)?;
    if claims.exp <= now {
        Err(JwtError::Expired)
    } else if claims.nbf > now {
        Err(JwtError::NotYetValid)
    } else {
        Ok(claims)
    }
}

/// Reads a token's claims without checking anything, as the proxy itself does.
pub fn decode_unverified(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    decode_payload(payload)
}

fn decode_payload(payload: &str) -> Option<Claims> {
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Accepts only an HS512 header, so a token cannot pick a weaker (or no) algorithm.
fn check_header(header: &str) -> Result<(), JwtError> {
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
    let header: serde_json::Value = serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)?;
    if header["alg"] == "HS512" { Ok(()) } else { Err(JwtError::Malformed) }
}

fn mac(secret: &[u8]) -> HmacSha512 {
    HmacSha512::new_from_slice(secret).expect("HMAC accepts keys of any length")
}
