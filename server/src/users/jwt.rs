//! API access tokens as JWTs: HS256 only (the algorithm is pinned, so `alg:
//! none` and key confusion are refused), with `exp`, `iat`, `aud` and `iss`
//! required and checked. The secret is generated into the data directory.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Issuer claim of every token this server signs.
pub const ISSUER: &str = "drover";
/// Audience claim: the REST API.
pub const AUDIENCE: &str = "drover-api";

/// The claims Drover puts into a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
}

/// Signs and checks tokens with the server's secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_s: u64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Loads `jwt.secret` from the data directory, creating 64 random bytes on first start.
    pub fn load_or_create(data_dir: &Path, ttl_minutes: u32) -> std::io::Result<JwtKeys> {
        let secret = crate::secrets::load_or_create(&data_dir.join("jwt.secret"), || {
            let bytes: [u8; 64] = rand::random();
            bytes.to_vec()
        })?;
        if secret.len() < 32 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "jwt.secret in the data directory is shorter than 32 bytes; delete it to generate a new one",
            ));
        }
        Ok(JwtKeys::from_secret(&secret, ttl_minutes))
    }

    /// Keys from a known secret (tests).
    pub fn from_secret(secret: &[u8], ttl_minutes: u32) -> JwtKeys {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_s: u64::from(ttl_minutes) * 60,
        }
    }

    /// Issues a token for a user, returning it with its expiry (seconds since the epoch).
    pub fn issue(&self, user_id: &str, now_s: u64) -> Result<(String, u64)> {
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now_s,
            exp: now_s + self.ttl_s,
            aud: AUDIENCE.into(),
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("cannot sign token: {e}")))?;
        Ok((token, claims.exp))
    }

    /// Checks signature, algorithm, expiry, audience and issuer; answers the claims.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired; log in again",
                    ErrorKind::InvalidAudience => "the token is not meant for this API",
                    ErrorKind::InvalidIssuer => "the token was not issued by this server",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                    _ => "the token is malformed",
                };
                Error::Unauthorized(why.into())
            })
    }
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> JwtKeys {
        JwtKeys::from_secret(&[7u8; 64], 15)
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn issued_tokens_verify() {
        let (token, exp) = keys().issue("u1", now_s()).expect("issue");
        let claims = keys().verify(&token).expect("valid");
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.exp, exp);
    }

    #[test]
    fn expired_token_is_refused() {
        let (token, _) = keys().issue("u1", now_s() - 3600).expect("issue");
        let err = keys().verify(&token).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn other_secret_is_refused() {
        let (token, _) = JwtKeys::from_secret(&[8u8; 64], 15)
            .issue("u1", now_s())
            .expect("issue");
        assert!(keys().verify(&token).is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let now = now_s();
        let header = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        let claims = b64(
            &serde_json::json!({"sub": "u1", "iat": now, "exp": now + 600,
            "aud": AUDIENCE, "iss": ISSUER}),
        );
        assert!(keys().verify(&format!("{header}.{claims}.")).is_err());
    }

    #[test]
    fn wrong_audience_is_refused() {
        let now = now_s();
        let claims = Claims {
            sub: "u1".into(),
            iat: now,
            exp: now + 600,
            aud: "someone-else".into(),
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 64]),
        )
        .expect("encode");
        let err = keys().verify(&token).unwrap_err();
        assert!(err.to_string().contains("not meant"), "{err}");
    }
}
