//! The opening handshake ([RFC 6455 §4.2]): the client's HTTP/1.1 upgrade request and the
//! server's 101 (or error) response.
//!
//! ```text
//! GET /relay HTTP/1.1                              HTTP/1.1 101 Switching Protocols
//! Host: relay.example                              Upgrade: websocket
//! Upgrade: websocket                        ──▶    Connection: Upgrade
//! Connection: Upgrade                              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
//! Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
//! Sec-WebSocket-Version: 13
//! Authorization: Bearer <token>                    (optional; else an AUTH frame follows)
//! ```
//!
//! [`parse_request`] is incremental: it answers `Ok(None)` until the blank line that ends the
//! header block, and refuses a block that grows past [`MAX_HEADER_BLOCK`] (431) so a client
//! cannot make the server buffer an endless header. Checks run in this order, and the first
//! failure decides the response: method `GET` and HTTP/1.1 (400), path (404), `Host`,
//! `Upgrade: websocket`, `Connection: upgrade` (400), `Sec-WebSocket-Version: 13` (426 with
//! `Sec-WebSocket-Version: 13`, also when missing), a `Sec-WebSocket-Key` that is base64 of
//! 16 bytes (400), and a well-formed `Authorization: Bearer` if one is present (401).
//! Header names and the `Upgrade`/`Connection` tokens compare case-insensitively; the
//! headers that must appear once (`Host`, the key, the version, `Authorization`) are refused
//! when repeated.
//!
//! [RFC 6455 §4.2]: https://www.rfc-editor.org/rfc/rfc6455#section-4.2

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest as _, Sha1};

use super::frame::BufferTooSmall;

/// Largest header block accepted, request line included. 8 KiB is the common server default
/// (nginx's `large_client_header_buffers`): far above any real upgrade request.
pub const MAX_HEADER_BLOCK: usize = 8 * 1024;

/// Most header lines parsed; more is refused (431). A browser or client library sends about
/// ten on an upgrade.
pub const MAX_HEADERS: usize = 32;

/// Longest bearer token kept, in bytes. Tokens are opaque to the relay and checked by the
/// owner; 4 KiB leaves room for a signed JWT with a few claims.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The GUID appended to the key before hashing ([RFC 6455 §1.3]).
///
/// [RFC 6455 §1.3]: https://www.rfc-editor.org/rfc/rfc6455#section-1.3
pub const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest response [`write_response`]/[`write_error`] produce; size staging buffers by it.
pub const MAX_RESPONSE_LEN: usize = 160;

/// A valid upgrade request, borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// `Sec-WebSocket-Accept` to answer with.
    pub accept: AcceptKey,
    /// The bearer token from `Authorization`, if the request had one.
    pub token: Option<&'a [u8]>,
    /// Bytes of the header block (through the blank line); frames start after it.
    pub len: usize,
}

/// The 28-character `Sec-WebSocket-Accept` value: base64(SHA-1(key ‖ GUID)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AcceptKey([u8; 28]);

impl AcceptKey {
    /// Derives the accept value from the `Sec-WebSocket-Key` as sent (its base64 text).
    pub fn derive(key: &[u8]) -> Self {
        let mut hasher = Sha1::new();
        hasher.update(key);
        hasher.update(WEBSOCKET_GUID);
        let digest = hasher.finalize();
        let mut out = [0u8; 28];
        // 20 bytes always encode to exactly 28 base64 characters.
        let _ = STANDARD.encode_slice(digest.as_slice(), &mut out);
        Self(out)
    }

    /// The value as ASCII.
    pub fn as_bytes(&self) -> &[u8; 28] {
        &self.0
    }
}

impl std::fmt::Debug for AcceptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AcceptKey")
            .field(&String::from_utf8_lossy(&self.0))
            .finish()
    }
}

/// Why an upgrade request is refused. [`status`](Self::status) gives the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// No complete header block within [`MAX_HEADER_BLOCK`] bytes, or more than
    /// [`MAX_HEADERS`] headers.
    #[error("header block too large")]
    TooLarge,
    /// Not parseable as HTTP/1.x.
    #[error("malformed HTTP request")]
    Malformed,
    /// A method other than GET.
    #[error("method is not GET")]
    NotGet,
    /// HTTP/1.0.
    #[error("not HTTP/1.1")]
    NotHttp11,
    /// A path other than the relay's.
    #[error("unknown path")]
    NotFound,
    /// No `Host`, or more than one.
    #[error("missing or repeated Host")]
    BadHost,
    /// No `websocket` token in `Upgrade`.
    #[error("Upgrade does not name websocket")]
    NotWebSocket,
    /// No `upgrade` token in `Connection`.
    #[error("Connection does not name upgrade")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` missing, repeated or not 13.
    #[error("unsupported WebSocket version")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, repeated or not base64 of 16 bytes.
    #[error("bad Sec-WebSocket-Key")]
    BadKey,
    /// `Authorization` repeated, not `Bearer`, or with an empty, oversized or ill-formed
    /// token.
    #[error("bad Authorization")]
    BadAuthorization,
}

/// The HTTP error statuses the handshake answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// 400 Bad Request.
    BadRequest,
    /// 401 Unauthorized (with `WWW-Authenticate: Bearer`).
    Unauthorized,
    /// 404 Not Found.
    NotFound,
    /// 426 Upgrade Required (with `Sec-WebSocket-Version: 13`).
    UpgradeRequired,
    /// 431 Request Header Fields Too Large.
    HeaderTooLarge,
}

impl Status {
    /// The status line after `HTTP/1.1 `.
    pub const fn line(self) -> &'static str {
        match self {
            Self::BadRequest => "400 Bad Request",
            Self::Unauthorized => "401 Unauthorized",
            Self::NotFound => "404 Not Found",
            Self::UpgradeRequired => "426 Upgrade Required",
            Self::HeaderTooLarge => "431 Request Header Fields Too Large",
        }
    }
}

impl HandshakeError {
    /// The response status for this refusal.
    pub const fn status(self) -> Status {
        match self {
            Self::TooLarge => Status::HeaderTooLarge,
            Self::NotFound => Status::NotFound,
            Self::UnsupportedVersion => Status::UpgradeRequired,
            Self::BadAuthorization => Status::Unauthorized,
            Self::Malformed
            | Self::NotGet
            | Self::NotHttp11
            | Self::BadHost
            | Self::NotWebSocket
            | Self::NoConnectionUpgrade
            | Self::BadKey => Status::BadRequest,
        }
    }
}

/// Parses and validates an upgrade request for `path` from the start of `buf`: `Ok(None)`
/// while the header block is incomplete. Never copies; the token borrows `buf`.
pub fn parse_request<'a>(
    buf: &'a [u8],
    path: &str,
) -> Result<Option<UpgradeRequest<'a>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(MAX_HEADER_BLOCK)];
    let len = match request.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() < MAX_HEADER_BLOCK => return Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooLarge);
        }
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if request.method != Some("GET") {
        return Err(HandshakeError::NotGet);
    }
    if request.version != Some(1) {
        return Err(HandshakeError::NotHttp11);
    }
    let target = request.path.unwrap_or_default();
    let request_path = target.split_once('?').map_or(target, |(p, _)| p);
    if request_path != path {
        return Err(HandshakeError::NotFound);
    }
    let mut host = 0;
    let mut upgrade = false;
    let mut connection = false;
    let mut version = None;
    let mut key = None;
    let mut authorization = None;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("host") {
            host += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = once(version, value, HandshakeError::UnsupportedVersion)?;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = once(key, value, HandshakeError::BadKey)?;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = once(authorization, value, HandshakeError::BadAuthorization)?;
        }
    }
    if host != 1 {
        return Err(HandshakeError::BadHost);
    }
    if !upgrade {
        return Err(HandshakeError::NotWebSocket);
    }
    if !connection {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if version.map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = key.map(<[u8]>::trim_ascii).ok_or(HandshakeError::BadKey)?;
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    let token = authorization.map(bearer_token).transpose()?;
    Ok(Some(UpgradeRequest {
        accept: AcceptKey::derive(key),
        token,
        len,
    }))
}

/// Writes the 101 Switching Protocols response into `out`; returns its length.
pub fn write_response(accept: &AcceptKey, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let mut w = Cursor::new(out);
    w.put(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    w.put(b"Sec-WebSocket-Accept: ");
    w.put(accept.as_bytes());
    w.put(b"\r\n\r\n");
    let len = w.finish()?;
    Ok(len)
}

/// Writes an error response for `status` into `out`; returns its length. The connection is
/// to be closed after it (`Connection: close`).
pub fn write_error(status: Status, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let mut w = Cursor::new(out);
    w.put(b"HTTP/1.1 ");
    w.put(status.line().as_bytes());
    w.put(b"\r\n");
    match status {
        Status::UpgradeRequired => w.put(b"Sec-WebSocket-Version: 13\r\n"),
        Status::Unauthorized => w.put(b"WWW-Authenticate: Bearer\r\n"),
        Status::BadRequest | Status::NotFound | Status::HeaderTooLarge => {}
    }
    w.put(b"Connection: close\r\nContent-Length: 0\r\n\r\n");
    let len = w.finish()?;
    Ok(len)
}

/// Longest `Host` value [`ClientUpgrade::new`] accepts: a DNS name with its port.
pub const MAX_HOST_LEN: usize = 255;

/// Longest request path [`ClientUpgrade::new`] accepts; far above any relay path.
pub const MAX_PATH_LEN: usize = 2048;

/// The client's side of the opening handshake ([RFC 6455 §4.1]): the upgrade request it
/// writes and the checks on the server's answer. Used by the mesh link and by node clients.
///
/// [RFC 6455 §4.1]: https://www.rfc-editor.org/rfc/rfc6455#section-4.1
pub struct ClientUpgrade {
    request: Vec<u8>,
    accept: AcceptKey,
}

/// Why [`ClientUpgrade::new`] refuses its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The `Host` value is empty, longer than [`MAX_HOST_LEN`], or not visible ASCII.
    #[error("invalid Host header value")]
    InvalidHost,
    /// The path does not start with `/`, is longer than [`MAX_PATH_LEN`], or is not visible
    /// ASCII.
    #[error("invalid request path")]
    InvalidPath,
    /// The token is not a bearer `token68` of at most [`MAX_TOKEN_LEN`] bytes.
    #[error("invalid bearer token")]
    InvalidToken,
}

/// Why the server's answer to the upgrade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// No complete header block within [`MAX_HEADER_BLOCK`] bytes, or more than
    /// [`MAX_HEADERS`] headers.
    #[error("response header block too large")]
    TooLarge,
    /// Not parseable as an HTTP/1.1 response.
    #[error("malformed HTTP response")]
    Malformed,
    /// A status other than 101 (401, 404, 426, 503…).
    #[error("status {0} instead of 101")]
    Status(u16),
    /// No `websocket` token in `Upgrade`.
    #[error("Upgrade does not name websocket")]
    NotWebSocket,
    /// No `upgrade` token in `Connection`.
    #[error("Connection does not name upgrade")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Accept` missing, repeated, or not the hash of our key.
    #[error("bad Sec-WebSocket-Accept")]
    BadAccept,
    /// A `Sec-WebSocket-Extensions` or `Sec-WebSocket-Protocol` we did not ask for.
    #[error("extension or subprotocol not requested")]
    Unrequested,
}

impl ClientUpgrade {
    /// The upgrade request for `path` on `host` (the `Host` header: the server's name, with
    /// its port if not the default), with `Authorization: Bearer token` if a token is given,
    /// and `key_nonce` as the 16 random bytes of `Sec-WebSocket-Key`.
    pub fn new(
        host: &str,
        path: &str,
        token: Option<&[u8]>,
        key_nonce: [u8; 16],
    ) -> Result<Self, RequestError> {
        let visible = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if host.is_empty() || host.len() > MAX_HOST_LEN || !visible(host) {
            return Err(RequestError::InvalidHost);
        }
        if !path.starts_with('/') || path.len() > MAX_PATH_LEN || !visible(path) {
            return Err(RequestError::InvalidPath);
        }
        if token.is_some_and(|token| !is_bearer_token(token)) {
            return Err(RequestError::InvalidToken);
        }
        let mut key = [0u8; 24];
        // 16 bytes always encode to exactly 24 base64 characters.
        let _ = STANDARD.encode_slice(key_nonce, &mut key);
        let token_len = token.map_or(0, <[u8]>::len);
        let mut request = Vec::with_capacity(200 + host.len() + path.len() + token_len);
        for part in [
            b"GET ",
            path.as_bytes(),
            b" HTTP/1.1\r\nHost: ",
            host.as_bytes(),
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
            &key,
            b"\r\nSec-WebSocket-Version: 13\r\n",
        ] {
            request.extend_from_slice(part);
        }
        if let Some(token) = token {
            request.extend_from_slice(b"Authorization: Bearer ");
            request.extend_from_slice(token);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        Ok(Self {
            request,
            accept: AcceptKey::derive(&key),
        })
    }

    /// The request's bytes, to write before anything else.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Drops the request once it is written, so the token it carries does not stay in
    /// memory; [`request`](Self::request) is empty from then on.
    pub fn forget_request(&mut self) {
        self.request = Vec::new();
    }

    /// The `Sec-WebSocket-Accept` the server must answer with.
    pub const fn accept(&self) -> &AcceptKey {
        &self.accept
    }

    /// Parses the server's answer at the start of `input`: `Ok(None)` until its header block
    /// is complete, then the block's length (frames follow it) if it is an acceptable 101:
    /// HTTP/1.1, status 101, the upgrade headers, our accept key, and nothing negotiated that
    /// we did not offer.
    pub fn parse_response(&self, input: &[u8]) -> Result<Option<usize>, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let window = &input[..input.len().min(MAX_HEADER_BLOCK)];
        match response.parse(window) {
            Ok(httparse::Status::Complete(len)) => {
                check_response(&response, &self.accept)?;
                Ok(Some(len))
            }
            Ok(httparse::Status::Partial) if window.len() < MAX_HEADER_BLOCK => Ok(None),
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                Err(ResponseError::TooLarge)
            }
            Err(_) => Err(ResponseError::Malformed),
        }
    }
}

/// The request holds a credential: `Debug` shows its length only.
impl std::fmt::Debug for ClientUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientUpgrade(<{} bytes>)", self.request.len())
    }
}

/// The checks on a complete response.
fn check_response(
    response: &httparse::Response<'_, '_>,
    accept: &AcceptKey,
) -> Result<(), ResponseError> {
    if response.version != Some(1) {
        return Err(ResponseError::Malformed);
    }
    match response.code {
        Some(101) => {}
        Some(code) => return Err(ResponseError::Status(code)),
        None => return Err(ResponseError::Malformed),
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accepts = 0;
    let mut accept_ok = false;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(header.value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(header.value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepts += 1;
            accept_ok = header.value.trim_ascii() == accept.as_bytes();
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions")
            || name.eq_ignore_ascii_case("sec-websocket-protocol")
        {
            return Err(ResponseError::Unrequested);
        }
    }
    if !upgrade {
        return Err(ResponseError::NotWebSocket);
    }
    if !connection {
        return Err(ResponseError::NoConnectionUpgrade);
    }
    if accepts != 1 || !accept_ok {
        return Err(ResponseError::BadAccept);
    }
    Ok(())
}

/// Whether the comma-separated `list` holds `token`, ignoring case and spaces.
pub(crate) fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// The value of a header that must appear at most once.
fn once<'a>(
    seen: Option<&'a [u8]>,
    value: &'a [u8],
    err: HandshakeError,
) -> Result<Option<&'a [u8]>, HandshakeError> {
    if seen.is_some() {
        return Err(err);
    }
    Ok(Some(value))
}

/// §4.2.1 item 5: base64 that decodes to 16 bytes, so exactly 24 characters.
fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut decoded) == Ok(16)
}

/// The token of `Bearer <token>` ([RFC 6750 §2.1]: case-insensitive scheme, a token68).
///
/// [RFC 6750 §2.1]: https://www.rfc-editor.org/rfc/rfc6750#section-2.1
fn bearer_token(value: &[u8]) -> Result<&[u8], HandshakeError> {
    let value = value.trim_ascii();
    let Some((scheme, rest)) = value.split_at_checked(6) else {
        return Err(HandshakeError::BadAuthorization);
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return Err(HandshakeError::BadAuthorization);
    }
    let token = rest.trim_ascii();
    if !is_bearer_token(token) {
        return Err(HandshakeError::BadAuthorization);
    }
    Ok(token)
}

/// Whether `token` is a `token68` of at most [`MAX_TOKEN_LEN`] bytes: what a `Bearer`
/// header may carry.
pub(crate) fn is_bearer_token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    token.len() <= MAX_TOKEN_LEN
        && body_len > 0
        && token[..body_len]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// An allocation-free writer into a fixed slice that remembers overflow.
struct Cursor<'a> {
    out: &'a mut [u8],
    len: usize,
    overflow: usize,
}

impl<'a> Cursor<'a> {
    const fn new(out: &'a mut [u8]) -> Self {
        Self {
            out,
            len: 0,
            overflow: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.overflow == 0 {
            let mut rest = &mut self.out[self.len..];
            if rest.write_all(bytes).is_ok() {
                self.len += bytes.len();
                return;
            }
        }
        self.overflow += bytes.len();
    }

    const fn finish(self) -> Result<usize, BufferTooSmall> {
        if self.overflow > 0 {
            return Err(BufferTooSmall {
                needed: self.len + self.overflow,
            });
        }
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /relay HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn with(replace: &str, by: &str) -> Vec<u8> {
        let text = std::str::from_utf8(REQUEST).unwrap();
        assert!(text.contains(replace), "{replace}");
        text.replacen(replace, by, 1).into_bytes()
    }

    fn parse(buf: &[u8]) -> Result<Option<UpgradeRequest<'_>>, HandshakeError> {
        parse_request(buf, "/relay")
    }

    #[test]
    fn rfc6455_section_1_3_accept_key() {
        let accept = AcceptKey::derive(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept.as_bytes(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_the_rfc_request_and_writes_101() {
        let request = parse(REQUEST).unwrap().unwrap();
        assert_eq!(request.len, REQUEST.len());
        assert_eq!(request.token, None);
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let len = write_response(&request.accept, &mut out).unwrap();
        assert_eq!(
            &out[..len],
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert_eq!(
            write_response(&request.accept, &mut out[..20]),
            Err(BufferTooSmall { needed: len })
        );
    }

    #[test]
    fn incremental_until_the_blank_line() {
        for cut in 0..REQUEST.len() {
            assert_eq!(parse(&REQUEST[..cut]), Ok(None), "cut {cut}");
        }
        let mut more = REQUEST.to_vec();
        more.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
        assert_eq!(parse(&more).unwrap().unwrap().len, REQUEST.len());
    }

    #[test]
    fn header_block_is_capped() {
        let mut huge = b"GET /relay HTTP/1.1\r\nX-Pad: ".to_vec();
        huge.resize(MAX_HEADER_BLOCK - 1, b'a');
        assert_eq!(parse(&huge), Ok(None));
        huge.push(b'a');
        assert_eq!(parse(&huge), Err(HandshakeError::TooLarge));
        let mut many = b"GET /relay HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Err(HandshakeError::TooLarge));
        assert_eq!(HandshakeError::TooLarge.status(), Status::HeaderTooLarge);
    }

    #[test]
    fn every_refusal_and_its_status() {
        let cases: &[(&str, &str, HandshakeError, Status)] = &[
            ("GET", "POST", HandshakeError::NotGet, Status::BadRequest),
            (
                "HTTP/1.1\r\n",
                "HTTP/1.0\r\n",
                HandshakeError::NotHttp11,
                Status::BadRequest,
            ),
            (
                "/relay",
                "/other",
                HandshakeError::NotFound,
                Status::NotFound,
            ),
            (
                "Host: server.example.com\r\n",
                "",
                HandshakeError::BadHost,
                Status::BadRequest,
            ),
            (
                "Host: server.example.com\r\n",
                "Host: a\r\nHost: b\r\n",
                HandshakeError::BadHost,
                Status::BadRequest,
            ),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                HandshakeError::NotWebSocket,
                Status::BadRequest,
            ),
            (
                "Connection: Upgrade",
                "Connection: keep-alive",
                HandshakeError::NoConnectionUpgrade,
                Status::BadRequest,
            ),
            (
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 8",
                HandshakeError::UnsupportedVersion,
                Status::UpgradeRequired,
            ),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "",
                HandshakeError::UnsupportedVersion,
                Status::UpgradeRequired,
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
                HandshakeError::BadKey,
                Status::BadRequest,
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXM=",
                HandshakeError::BadKey,
                Status::BadRequest,
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "",
                HandshakeError::BadKey,
                Status::BadRequest,
            ),
            (
                "Origin",
                "Authorization: Basic dXNlcjpwYXNz\r\nOrigin",
                HandshakeError::BadAuthorization,
                Status::Unauthorized,
            ),
            (
                "Origin",
                "Authorization: Bearer \r\nOrigin",
                HandshakeError::BadAuthorization,
                Status::Unauthorized,
            ),
            (
                "Origin",
                "Authorization: Bearer a b\r\nOrigin",
                HandshakeError::BadAuthorization,
                Status::Unauthorized,
            ),
        ];
        for (replace, by, err, status) in cases {
            let request = with(replace, by);
            assert_eq!(parse(&request), Err(*err), "{replace} -> {by}");
            assert_eq!(err.status(), *status);
        }
        assert_eq!(
            parse(b"GARBAGE\x00\r\n\r\n"),
            Err(HandshakeError::Malformed)
        );
    }

    #[test]
    fn token_lists_and_case() {
        let request = with("Upgrade: websocket", "uPgRaDe: foo, WebSocket");
        let request = String::from_utf8(request)
            .unwrap()
            .replace("Connection: Upgrade", "connection: keep-alive, upgrade");
        assert!(parse(request.as_bytes()).unwrap().is_some());
        let query = with("/relay", "/relay?v=1");
        assert!(parse(&query).unwrap().is_some());
        assert_eq!(
            parse_request(REQUEST, "/derp"),
            Err(HandshakeError::NotFound)
        );
    }

    #[test]
    fn extracts_the_bearer_token() {
        let request = with(
            "Origin",
            "authorization: bearer abc.DEF-_~+/xyz==\r\nOrigin",
        );
        let parsed = parse(&request).unwrap().unwrap();
        assert_eq!(parsed.token, Some(&b"abc.DEF-_~+/xyz=="[..]));
        let twice = with(
            "Origin",
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\nOrigin",
        );
        assert_eq!(parse(&twice), Err(HandshakeError::BadAuthorization));
        let long = with(
            "Origin",
            &format!(
                "Authorization: Bearer {}\r\nOrigin",
                "a".repeat(MAX_TOKEN_LEN + 1)
            ),
        );
        assert_eq!(parse(&long), Err(HandshakeError::BadAuthorization));
    }

    #[test]
    fn error_responses() {
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let len = write_error(Status::UpgradeRequired, &mut out).unwrap();
        assert_eq!(
            &out[..len],
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
              Connection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let len = write_error(Status::Unauthorized, &mut out).unwrap();
        assert!(
            out[..len].starts_with(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n")
        );
        for status in [
            Status::BadRequest,
            Status::NotFound,
            Status::HeaderTooLarge,
            Status::Unauthorized,
            Status::UpgradeRequired,
        ] {
            let len = write_error(status, &mut out).unwrap();
            assert!(len <= MAX_RESPONSE_LEN);
            assert!(write_error(status, &mut out[..len - 1]).is_err());
        }
    }

    #[test]
    fn client_request_passes_the_server_parser_and_the_answer_passes_the_client() {
        // RFC 6455 §1.3's sample nonce "the sample nonce".
        let nonce = *b"the sample nonce";
        for token in [None, Some(&b"abc.def-ghi_"[..])] {
            let upgrade = ClientUpgrade::new("relay.example:8443", "/relay", token, nonce).unwrap();
            let parsed = parse_request(upgrade.request(), "/relay").unwrap().unwrap();
            assert_eq!(parsed.len, upgrade.request().len());
            assert_eq!(parsed.token, token);
            assert_eq!(
                upgrade.accept().as_bytes(),
                b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "RFC 6455 §1.3's example"
            );
            let mut out = [0u8; MAX_RESPONSE_LEN];
            let len = write_response(&parsed.accept, &mut out).unwrap();
            let mut answer = out[..len].to_vec();
            answer.extend_from_slice(&[0x82, 0x00]);
            // Byte by byte: nothing until the blank line, then the block's length.
            for cut in 0..len {
                assert_eq!(
                    upgrade.parse_response(&answer[..cut]),
                    Ok(None),
                    "cut {cut}"
                );
            }
            assert_eq!(upgrade.parse_response(&answer), Ok(Some(len)));
        }
    }

    #[test]
    fn client_refuses_bad_arguments_and_bad_answers() {
        let nonce = [7; 16];
        assert_eq!(
            ClientUpgrade::new("", "/relay", None, nonce).unwrap_err(),
            RequestError::InvalidHost
        );
        assert_eq!(
            ClientUpgrade::new("a b", "/relay", None, nonce).unwrap_err(),
            RequestError::InvalidHost
        );
        assert_eq!(
            ClientUpgrade::new("h", "relay", None, nonce).unwrap_err(),
            RequestError::InvalidPath
        );
        assert_eq!(
            ClientUpgrade::new("h", "/relay", Some(b"a b"), nonce).unwrap_err(),
            RequestError::InvalidToken
        );
        let mut upgrade = ClientUpgrade::new("h", "/relay", Some(b"tok"), nonce).unwrap();
        let accept = String::from_utf8_lossy(upgrade.accept().as_bytes()).into_owned();
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert!(upgrade.parse_response(good.as_bytes()).unwrap().is_some());
        let cases = [
            (
                "HTTP/1.1 401 Unauthorized\r\n\r\n".to_owned(),
                ResponseError::Status(401),
            ),
            (good.replace(&accept, "x"), ResponseError::BadAccept),
            (
                good.replace("Upgrade: websocket", "Upgrade: h2c"),
                ResponseError::NotWebSocket,
            ),
            (
                good.replace("Connection: Upgrade", "Connection: close"),
                ResponseError::NoConnectionUpgrade,
            ),
            (
                good.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: x\r\n\r\n"),
                ResponseError::Unrequested,
            ),
            (
                "HTTP/1.0 101 OK\r\n\r\n".to_owned(),
                ResponseError::Malformed,
            ),
            ("garbage\r\n\r\n".to_owned(), ResponseError::Malformed),
            ("HTTP/1.1 101 OK\r\n".repeat(1000), ResponseError::Malformed),
        ];
        for (answer, err) in cases {
            assert_eq!(
                upgrade.parse_response(answer.as_bytes()),
                Err(err),
                "{answer}"
            );
        }
        let endless = format!("HTTP/1.1 101 OK\r\n{}", "X-A: b\r\n".repeat(2000));
        assert_eq!(
            upgrade.parse_response(endless.as_bytes()),
            Err(ResponseError::TooLarge)
        );
        upgrade.forget_request();
        assert!(upgrade.request().is_empty());
        assert!(upgrade.parse_response(good.as_bytes()).unwrap().is_some());
    }
}
