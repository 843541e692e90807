//! Checkout tokens: JWTs the checkout service verifies before it lets a user in.
//!
//! A token is a pure function of the admission (event, session, user, admission
//! instant, deadline) and the key, so signing the same admission twice, after a
//! crash for instance, gives the very same token. `exp` is the slot's deadline:
//! the token never outlives the slot it was issued for.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Shortest HMAC secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;

/// Why a token could not be made or was refused.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("the JWT secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    /// An HS256 secret shorter than [`MIN_SECRET_LEN`].
    SecretTooShort(usize),
    #[error("the JWT key could not be read: {0}")]
    /// A PEM key that does not parse.
    Key(String),
    #[error("signing failed: {0}")]
    /// Signing failed.
    Sign(String),
    #[error("token rejected: {0}")]
    /// A token that does not verify.
    Invalid(String),
}

/// The claims of a checkout token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer.
    pub iss: String,
    /// The audience (the checkout service).
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session id.
    pub sid: String,
    /// The event id.
    pub eid: String,
    /// Admission instant, seconds since the epoch.
    pub iat: u64,
    /// The checkout deadline, seconds since the epoch (the slot's deadline).
    pub exp: u64,
    /// Stable id of this admission (also the QUEUE_READY message id).
    pub jti: String,
    /// Claim-by, seconds since the epoch: with a claim window, the last second the
    /// admission may be claimed, so a checkout service can refuse a late token
    /// without asking Redis. Absent without a claim window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cby: Option<u64>,
}

/// The stable id of one admission: hex SHA1 over event, session and admission ms.
pub fn admission_id(event: &str, session: &str, admitted_ms: u64) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(event.as_bytes());
    h.update(&[0]);
    h.update(session.as_bytes());
    h.update(&[0]);
    h.update(admitted_ms.to_string().as_bytes());
    h.digest().to_string()
}

/// The deadlines an admission at `admitted_ms` gets, as the admit script stamps
/// them: the checkout deadline, a whole second at least `window_ms` later (the
/// token's `exp`), and with a claim window (`claim_window_ms` > 0) the claim
/// deadline, a whole second too, never past the checkout deadline (`cby`). The
/// worker signs tokens before the admit call with these, so both must agree.
pub fn stamps(admitted_ms: u64, window_ms: u64, claim_window_ms: u64) -> (u64, Option<u64>) {
    let whole = |ms: u64| ms.div_ceil(1000).saturating_mul(1000);
    let deadline = whole(admitted_ms.saturating_add(window_ms));
    let claim_by = (claim_window_ms > 0)
        .then(|| whole(admitted_ms.saturating_add(claim_window_ms)).min(deadline));
    (deadline, claim_by)
}

/// Signs checkout tokens with one algorithm and key.
#[derive(Clone)]
pub struct Signer {
    header: Header,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Signer")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// HS256 with a shared secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::SecretTooShort(secret.len()));
        }
        Ok(Signer {
            header: Header::new(Algorithm::HS256),
            key: EncodingKey::from_secret(secret).map_err(|e| TokenError::Key(e.to_string()))?,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// RS256, ES256 or EdDSA with a PEM private key; `kid` names the key for verifiers.
    pub fn asymmetric(
        alg: Algorithm,
        pem: &[u8],
        kid: Option<String>,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, TokenError> {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            other => {
                return Err(TokenError::Key(format!(
                    "{other:?} is not an asymmetric algorithm offered here"
                )));
            }
        }
        .map_err(|e| TokenError::Key(e.to_string()))?;
        let mut header = Header::new(alg);
        header.kid = kid;
        Ok(Signer {
            header,
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.header.alg
    }

    /// The claims for one admission.
    pub fn claims(
        &self,
        event: &str,
        session: &str,
        user: &str,
        admitted_ms: u64,
        deadline_ms: u64,
    ) -> Claims {
        Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.to_owned(),
            sid: session.to_owned(),
            eid: event.to_owned(),
            iat: admitted_ms / 1000,
            exp: deadline_ms / 1000,
            jti: admission_id(event, session, admitted_ms),
            cby: None,
        }
    }

    /// The signed token of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&self.header, claims, &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }
}

/// Checks tokens the way a checkout service should: only the one algorithm expected
/// (so `none` and algorithm switches are refused), the issuer, the audience and `exp`.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier of HS256 tokens with this secret, issuer and audience.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        let key = DecodingKey::from_secret(secret).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(Self::new(Algorithm::HS256, key, issuer, audience))
    }

    /// A verifier of `alg` tokens with this key, issuer and audience.
    pub fn new(alg: Algorithm, key: DecodingKey, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        Verifier { key, validation }
    }

    /// The claims of a valid token, or why it is not.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_whole_seconds_as_the_script_makes_them() {
        assert_eq!(stamps(1_000, 60_000, 0), (61_000, None));
        assert_eq!(stamps(1_001, 60_000, 0), (62_000, None));
        assert_eq!(stamps(1_001, 60_000, 10_000), (62_000, Some(12_000)));
        assert_eq!(stamps(1_001, 5_000, 10_000), (7_000, Some(7_000)));
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn far_future_ms() -> u64 {
        crate::model::clock::now_ms() + 3_600_000
    }

    #[test]
    fn same_admission_same_token() {
        let s = Signer::hs256(SECRET, "waitroom", "checkout").expect("signer");
        let deadline = far_future_ms() / 1000 * 1000;
        let c = s.claims("e", "s", "u", deadline - 900_000, deadline);
        let a = s.sign(&c).expect("sign");
        let b = s
            .sign(&s.claims("e", "s", "u", deadline - 900_000, deadline))
            .expect("sign");
        assert_eq!(a, b);
        let v = Verifier::hs256(SECRET, "waitroom", "checkout")
            .expect("verifier")
            .verify(&a)
            .expect("verifies");
        assert_eq!(v, c);
        assert_eq!(v.exp * 1000, deadline);
    }

    #[test]
    fn short_secret_refused() {
        assert!(matches!(
            Signer::hs256(b"short", "i", "a"),
            Err(TokenError::SecretTooShort(5))
        ));
    }

    #[test]
    fn verifier_rejects_none_and_other_audiences() {
        let s = Signer::hs256(SECRET, "waitroom", "checkout").expect("signer");
        let d = far_future_ms();
        let t = s.sign(&s.claims("e", "s", "u", d - 1000, d)).expect("sign");
        assert!(
            Verifier::hs256(SECRET, "waitroom", "other")
                .expect("verifier")
                .verify(&t)
                .is_err()
        );
        // An unsigned token with alg "none" must be refused.
        let parts: Vec<&str> = t.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let forged = format!("{none_header}.{}.", parts[1]);
        assert!(
            Verifier::hs256(SECRET, "waitroom", "checkout")
                .expect("verifier")
                .verify(&forged)
                .is_err()
        );
    }

    /// A throwaway Ed25519 key pair for the tests below (made with `openssl genpkey
    /// -algorithm ed25519`; it signs nothing outside them).
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILk50QhODDzBFKxSFevgR3lZ/AP+cMWvXpjJbA/tteJs
-----END PRIVATE KEY-----
";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAuIIPHPT8mqBIl8m+bHC2oZeXzH3NyTTbdlT0EQqQGWM=
-----END PUBLIC KEY-----
";

    #[test]
    fn tokens_carry_only_the_configured_algorithm_and_a_switch_is_refused() {
        let s = Signer::asymmetric(
            Algorithm::EdDSA,
            ED_PRIVATE.as_bytes(),
            Some("k1".into()),
            "waitroom",
            "checkout",
        )
        .expect("signer");
        let d = far_future_ms();
        let claims = s.claims("e", "s", "u", d - 1000, d);
        let t = s.sign(&claims).expect("sign");
        let header = jsonwebtoken::decode_header(&t).expect("header");
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::EdDSA, Some("k1"))
        );
        let public = DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).expect("public key");
        let v = Verifier::new(Algorithm::EdDSA, public, "waitroom", "checkout");
        assert_eq!(v.verify(&t).expect("verifies"), claims);

        // The classic switch: HS256 "signed" with the public key as the secret.
        let forger = Signer::hs256(ED_PUBLIC.as_bytes(), "waitroom", "checkout").expect("forger");
        let forged = forger.sign(&claims).expect("sign");
        assert!(
            v.verify(&forged).is_err(),
            "an HS256 token passed an EdDSA verifier"
        );
        // And the other way: an HS256 verifier refuses the EdDSA token.
        assert!(
            Verifier::hs256(SECRET, "waitroom", "checkout")
                .expect("verifier")
                .verify(&t)
                .is_err()
        );
    }
}
