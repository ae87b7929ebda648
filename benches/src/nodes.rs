//! Node identities and their tokens for the WebSocket benchmarks.
//!
//! * Against **bosonserver** a node registers through the REST API
//!   (`POST /api/v1/nodes/register`, [`register`]) and presents the `sessionToken` of the
//!   answer, as a real node does.
//! * Against the **baseline** ([`crate::ws_baseline`]) the generator mints the same kind of
//!   token itself ([`TokenKeys::mint`]): an HS256 JWT with the control plane's claims
//!   ([`boson_shared::token::Claims`]) signed with the secret both were given. The baseline
//!   checks it with [`TokenKeys::verify`]. Both are the control plane's own code
//!   ([`boson_shared::token::Keys`], which `control/src/domain/auth.rs` uses too): pinned
//!   algorithm, issuer, audience, required claims, no header that names a key, and the
//!   lifetime against the caller's clock.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use boson_shared::token::{Claims, Keys, VerifyError};
use boson_shared::{NodeId, WgPublicKey};

/// Shortest HS256 secret accepted: the hash's output length (RFC 7518 §3.2), as the control
/// plane requires.
pub const MIN_SECRET_LEN: usize = 32;
/// Lifetime of minted tokens: longer than any run.
const TOKEN_TTL_SECS: i64 = 24 * 3600;
/// Bound of every step of a registration.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A node and the token it authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCredential {
    /// The node.
    pub node: NodeId,
    /// Its bearer token.
    pub token: String,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Bad signature, algorithm, issuer, audience, claims or subject.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// Mints and verifies node tokens with one HS256 secret.
#[derive(Debug)]
pub struct TokenKeys(Keys);

impl TokenKeys {
    /// Keys from `secret`, at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        ensure!(
            secret.len() >= MIN_SECRET_LEN,
            "the JWT secret must be at least {MIN_SECRET_LEN} bytes"
        );
        Ok(Self(Keys::new(secret)))
    }

    /// A token for `node`, issued at `now` (unix seconds), valid for a day.
    pub fn mint(&self, node: &NodeId, now: i64) -> anyhow::Result<String> {
        let claims = Claims::new(&node.to_string(), 1, now, now + TOKEN_TTL_SECS);
        Ok(self.0.sign(&claims)?)
    }

    /// The node `token` belongs to, if it verifies at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<NodeId, TokenError> {
        let claims = self.0.verify(token, now).map_err(|error| match error {
            VerifyError::Expired => TokenError::Expired,
            VerifyError::Invalid | _ => TokenError::Invalid,
        })?;
        claims.sub.parse().map_err(|_| TokenError::Invalid)
    }

    /// `count` fresh nodes with tokens minted at `now`.
    pub fn mint_nodes(&self, count: usize, now: i64) -> anyhow::Result<Vec<NodeCredential>> {
        (0..count)
            .map(|_| {
                let node = random_node();
                let token = self.mint(&node, now)?;
                Ok(NodeCredential { node, token })
            })
            .collect()
    }
}

/// A random version-4 UUID as a node id.
pub fn random_node() -> NodeId {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    NodeId::from_bytes(bytes)
}

/// Registers `count` fresh nodes with the REST API at `api` and returns their tokens.
///
/// Each registration is two requests, a challenge and the registration proving the node's
/// (freshly made) WireGuard key with it; bosonserver limits registrations per source address
/// (`--register-rate-limit`, 20 a minute by default), so benchmarks start it with a high
/// limit. A refusal is an error that quotes the answer.
pub fn register(api: SocketAddr, count: usize) -> anyhow::Result<Vec<NodeCredential>> {
    (0..count)
        .map(|index| register_one(api).with_context(|| format!("registering node {index}")))
        .collect()
}

fn register_one(api: SocketAddr) -> anyhow::Result<NodeCredential> {
    let node = random_node();
    let secret: [u8; 32] = rand::random();
    let key = WgPublicKey::from_bytes(boson_shared::key_proof::public_key(&secret));
    let (status, challenge) = post_json(api, "/api/v1/nodes/challenge", &serde_json::Value::Null)?;
    let proof = match status {
        200 => {
            let challenge: boson_shared::key_proof::Challenge =
                serde_json::from_slice(&challenge).context("the challenge is not JSON")?;
            Some(challenge.answer(&secret, node, crate::clock::unix_now())?)
        }
        // A bosonserver from before key proofs (6817528) has no such route; `compare.sh`
        // runs such revisions with the generator of today.
        404 | 405 => None,
        _ => bail!(
            "POST /api/v1/nodes/challenge on {api} answered {status}: {}",
            String::from_utf8_lossy(&challenge)
        ),
    };
    let mut body = serde_json::json!({
        "nodeId": node.to_string(),
        "publicKey": key.to_base64(),
        "networkInfo": {"ipv4": "127.0.0.1", "natType": "Symmetric", "localPort": 51820},
        "capabilities": {"maxConnections": 16, "bandwidth": {"up": 1000, "down": 1000}},
        "location": {"country": "US", "region": "bench"},
    });
    if let Some(proof) = proof {
        body["keyProof"] = serde_json::to_value(proof)?;
    }
    let (status, answer) = post_json(api, "/api/v1/nodes/register", &body)?;
    if status != 201 && status != 200 {
        bail!(
            "POST /api/v1/nodes/register on {api} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&answer).context("the registration answer is not JSON")?;
    let token = answer["sessionToken"]
        .as_str()
        .context("no sessionToken in the registration answer")?
        .to_owned();
    Ok(NodeCredential { node, token })
}

/// A blocking HTTP/1.1 POST of `body` as JSON; returns the status and the body.
fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let body = serde_json::to_vec(body)?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to the REST API at {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .context("reading the answer")?;
    parse_response(&response)
}

/// Status and body of a complete HTTP/1.1 response (`Content-Length`, chunked, or up to the
/// end of the connection).
pub fn parse_response(response: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(response).context("a malformed HTTP answer")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => bail!("the HTTP answer ended in its head"),
    };
    let status = parsed.code.context("no status")?;
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let rest = &response[head..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().context("a bad Content-Length")?;
        rest.get(..len)
            .context("the answer is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// The body of a chunked transfer coding (RFC 9112 §7.1), trailers ignored.
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line without CRLF")?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("a bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).context("a truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).context("a chunk without CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use boson_shared::token::{AUDIENCE, LEEWAY_SECS};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn minted_tokens_verify_like_the_control_planes() {
        let keys = TokenKeys::new(&[7; 32]).unwrap();
        let node = random_node();
        let token = keys.mint(&node, NOW).unwrap();
        assert_eq!(keys.verify(&token, NOW), Ok(node));
        assert_eq!(
            keys.verify(&token, NOW + TOKEN_TTL_SECS + LEEWAY_SECS),
            Ok(node)
        );
        assert_eq!(
            keys.verify(&token, NOW + TOKEN_TTL_SECS + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
        assert_eq!(
            keys.verify(&token, NOW - 60),
            Err(TokenError::Invalid),
            "issued in the future"
        );
        let other = TokenKeys::new(&[8; 32]).unwrap();
        assert_eq!(other.verify(&token, NOW), Err(TokenError::Invalid));
        assert_eq!(keys.verify("garbage", NOW), Err(TokenError::Invalid));
        assert!(
            TokenKeys::new(&[1; 31]).is_err(),
            "short secrets are refused"
        );
    }

    #[test]
    fn claims_are_the_control_planes() {
        let keys = TokenKeys::new(&[7; 32]).unwrap();
        let node = random_node();
        let token = keys.mint(&node, NOW).unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_audience(&[AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(&[7; 32]),
            &validation,
        )
        .unwrap();
        let claims = data.claims;
        assert_eq!(claims["iss"], "bosonserver");
        assert_eq!(claims["aud"], "bosonserver-node");
        assert_eq!(claims["sub"], node.to_string());
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["generation"], 1);
        assert_eq!(data.header.alg, Algorithm::HS256);
    }

    #[test]
    fn node_ids_are_v4_uuids() {
        let node = random_node();
        assert_eq!(node.as_uuid().get_version_num(), 4);
        assert_ne!(random_node(), node);
    }

    #[test]
    fn http_answers() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                      content-length: 11\r\n\r\n{\"a\": true}";
        assert_eq!(
            parse_response(plain).unwrap(),
            (201, b"{\"a\": true}".to_vec())
        );
        let chunked = b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\n\r\n\
                        4\r\n{\"a\"\r\n7;ext=1\r\n: true}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (429, b"{\"a\": true}".to_vec())
        );
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nbody";
        assert_eq!(
            parse_response(until_close).unwrap(),
            (200, b"body".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
