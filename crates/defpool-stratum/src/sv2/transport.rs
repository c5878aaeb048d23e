//! The encrypted SV2 transport over a tokio `TcpStream`.
//!
//! The server side of the Noise NX handshake and its session ciphers are ours
//! ([`super::noise`]: static key and certificate made once per authority key pair); the client
//! side is SRI's `noise_sv2` (`Initiator`, `NoiseEncryptor`/`NoiseDecryptor`); frame headers are
//! `framing_sv2`'s; the chunk layout is `codec_sv2`'s (`encrypted_payload_length`): the 6-byte
//! header is encrypted on its own (22 bytes with its MAC), then the payload in chunks of at most
//! 65519 plaintext bytes, each with its own MAC. We drive the ciphers ourselves instead of
//! `codec_sv2::NoiseDecoder` only so that a frame's declared length is checked against
//! [`FrameLimits`] before any of its payload is read, and so that [`Sv2Reader::recv`] is
//! cancel-safe; the wire bytes are identical (the tests check interoperability with
//! `codec_sv2::NoiseEncoder`/`NoiseDecoder`).

use std::{
    net::SocketAddr,
    task::{ready, Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use stratum_core::{
    codec_sv2::{encrypted_payload_length, SV2_FRAME_PLAINTEXT_CHUNK_SIZE},
    framing_sv2::{header::Header, SV2_FRAME_CHUNK_SIZE},
    noise_sv2::{
        self, Initiator, NoiseDecryptor, NoiseEncryptor, AEAD_MAC_LEN, ELLSWIFT_ENCODING_SIZE,
        INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use super::{
    error::Sv2Error,
    keys::{AuthorityKeypair, AuthorityPublicKey},
    message::{decode_frame_payload, encode_frame, Message, FRAME_HEADER_SIZE},
    noise::CipherState,
};

/// The receiving cipher: ours on accepted connections, SRI's on connections we initiated.
enum RecvCipher {
    Own(CipherState),
    Sri(NoiseDecryptor),
}

impl RecvCipher {
    fn decrypt(&mut self, buf: &mut Vec<u8>) -> Result<(), Sv2Error> {
        match self {
            RecvCipher::Own(c) => c.decrypt(buf).map_err(|_| Sv2Error::Decrypt),
            RecvCipher::Sri(c) => c.decrypt(buf).map_err(|_| Sv2Error::Decrypt),
        }
    }
}

/// The sending cipher, as [`RecvCipher`].
enum SendCipher {
    Own(CipherState),
    Sri(NoiseEncryptor),
}

impl SendCipher {
    fn encrypt(&mut self, buf: &mut Vec<u8>) -> Result<(), ()> {
        match self {
            SendCipher::Own(c) => c.encrypt(buf).map_err(|_| ()),
            SendCipher::Sri(c) => c.encrypt(buf).map_err(|_| ()),
        }
    }
}

/// How long [`accept`] and [`connect`] wait for the handshake to complete.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of an encrypted frame header: 6 header bytes and a 16-byte MAC.
const ENCRYPTED_HEADER_SIZE: usize = FRAME_HEADER_SIZE + AEAD_MAC_LEN;

/// How much the reader asks the socket for at least. Small: an idle connection keeps this
/// much (thousands of idle miners); larger frames grow the buffer as they need.
const READ_CHUNK: usize = 512;

/// Buffer capacity the writer keeps between writes (a share's answer fits); beyond it, an
/// emptied buffer is released (a job does not stay allocated on an idle miner). The reader
/// keeps none: it waits for data before reserving.
const BUF_KEPT: usize = 128;

/// SRI's certificate check tolerates this much clock skew (seconds).
const CERT_TIME_LEEWAY: u32 = 10;

/// Bounds on what a peer may make us buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest plaintext payload a frame header may declare (the 6-byte header not counted). A
    /// frame above it fails with [`Sv2Error::FrameTooLarge`] before its payload is read.
    pub max_frame_bytes: usize,
}

impl FrameLimits {
    /// Room for the largest mining message, a `NewExtendedMiningJob` with two full 64 KiB
    /// coinbase parts and 255 merkle path entries (about 139 KB).
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024;
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// An established, encrypted SV2 connection.
#[derive(Debug)]
pub struct Sv2Connection {
    reader: Sv2Reader,
    writer: Sv2Writer,
    peer: Option<SocketAddr>,
}

impl Sv2Connection {
    /// Splits into halves that can live in different tasks.
    pub fn into_split(self) -> (Sv2Reader, Sv2Writer) {
        (self.reader, self.writer)
    }

    /// See [`Sv2Reader::recv`].
    pub async fn recv(&mut self) -> Result<Message, Sv2Error> {
        self.reader.recv().await
    }

    /// See [`Sv2Writer::send`].
    pub async fn send(&mut self, message: &Message) -> Result<(), Sv2Error> {
        self.writer.send(message).await
    }

    /// The peer's address, if the socket still knew it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }
}

/// The receiving half of an [`Sv2Connection`].
pub struct Sv2Reader {
    io: OwnedReadHalf,
    cipher: RecvCipher,
    limits: FrameLimits,
    /// Ciphertext received and not yet consumed.
    buf: Vec<u8>,
    /// The decrypted header of the frame whose payload is still arriving.
    header: Option<Header>,
    /// A message read during the handshake (the responder reads the initiator's first one).
    /// Boxed: a message is about 140 bytes, kept in every connection only for this.
    pending: Option<Box<Message>>,
}

impl std::fmt::Debug for Sv2Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sv2Reader")
            .field("limits", &self.limits)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl Sv2Reader {
    fn new(io: OwnedReadHalf, cipher: RecvCipher, limits: FrameLimits, buf: Vec<u8>) -> Self {
        Self {
            io,
            cipher,
            limits,
            buf,
            header: None,
            pending: None,
        }
    }

    /// The next message. Cancel-safe: if the future is dropped (e.g. in `tokio::select!`),
    /// bytes already read stay buffered and the next call continues the same frame.
    ///
    /// After any error other than [`Sv2Error::UnknownMessage`], [`Sv2Error::UnsupportedMessage`]
    /// and [`Sv2Error::BadPayload`] the stream is unusable; after those three the frame was
    /// consumed whole, so a lenient caller could go on, but the SV2 answer is to close.
    pub async fn recv(&mut self) -> Result<Message, Sv2Error> {
        // A poll function rather than nested `async fn`s: every state lives in `self`, so the
        // future a session waits on is a pointer wide instead of about 260 bytes of nested
        // futures, in the task of every idle connection.
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Sv2Reader::recv`] as a poll function.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, Sv2Error>> {
        if let Some(message) = self.pending.take() {
            return Poll::Ready(Ok(*message));
        }
        let (header, payload) = ready!(self.poll_frame(cx))?;
        Poll::Ready(decode_frame_payload(
            header.msg_type(),
            header.ext_type(),
            &payload,
        ))
    }

    /// The next frame's header and decrypted payload, not decoded.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<(Header, Vec<u8>), Sv2Error>> {
        let header = match self.header {
            Some(header) => header,
            None => {
                ready!(self.poll_fill(cx, ENCRYPTED_HEADER_SIZE, true))?;
                let mut bytes = self.buf[..ENCRYPTED_HEADER_SIZE].to_vec();
                self.buf.drain(..ENCRYPTED_HEADER_SIZE);
                self.cipher.decrypt(&mut bytes)?;
                let header = Header::from_bytes(&bytes).map_err(|e| Sv2Error::BadPayload {
                    name: "frame header",
                    detail: format!("{e:?}"),
                })?;
                if header.payload_length() > self.limits.max_frame_bytes {
                    return Poll::Ready(Err(Sv2Error::FrameTooLarge {
                        declared: header.payload_length(),
                        limit: self.limits.max_frame_bytes,
                    }));
                }
                self.header = Some(header);
                header
            }
        };
        let encrypted_len = encrypted_payload_length(&header);
        ready!(self.poll_fill(cx, encrypted_len, false))?;
        let mut payload = Vec::with_capacity(header.payload_length());
        for chunk in self.buf[..encrypted_len].chunks(SV2_FRAME_CHUNK_SIZE) {
            let mut chunk = chunk.to_vec();
            self.cipher.decrypt(&mut chunk)?;
            payload.extend_from_slice(&chunk);
        }
        self.buf.drain(..encrypted_len);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        self.header = None;
        Poll::Ready(Ok((header, payload)))
    }

    /// Reads until `need` bytes are buffered. Waits for data before reserving room for it, so
    /// an idle connection holds no read buffer.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        need: usize,
        at_frame_boundary: bool,
    ) -> Poll<Result<(), Sv2Error>> {
        while self.buf.len() < need {
            ready!(self.io.as_ref().poll_read_ready(cx))?;
            self.buf.reserve((need - self.buf.len()).max(READ_CHUNK));
            let n = match self.io.try_read_buf(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // A spurious wake-up: the readiness is cleared, the next poll waits.
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                    }
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            };
            if n == 0 {
                return Poll::Ready(Err(if at_frame_boundary && self.buf.is_empty() {
                    Sv2Error::Closed
                } else {
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
                }));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A message encoded once, to be encrypted for many connections (job fan-out).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    name: &'static str,
    bytes: Vec<u8>,
}

impl EncodedFrame {
    /// Encodes `message` (see [`super::encode_frame`]).
    pub fn new(message: &Message) -> Result<Self, Sv2Error> {
        Ok(Self {
            name: message.name(),
            bytes: encode_frame(message)?,
        })
    }

    /// The plaintext frame, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the payload starts with a channel id (the header's channel-message bit): such a
    /// frame can be sent to any channel by [`Sv2Writer::queue_for_channel`].
    pub fn is_channel_message(&self) -> bool {
        self.bytes.len() >= FRAME_HEADER_SIZE + 4
            && u16::from_le_bytes([self.bytes[0], self.bytes[1]]) & super::CHANNEL_MSG_BIT != 0
    }
}

/// The sending half of an [`Sv2Connection`].
pub struct Sv2Writer {
    io: OwnedWriteHalf,
    cipher: SendCipher,
    /// Ciphertext of the frame being written.
    out: Vec<u8>,
    /// How much of `out` is on the socket already.
    written: usize,
}

impl std::fmt::Debug for Sv2Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sv2Writer")
            .field("unsent", &(self.out.len() - self.written))
            .finish()
    }
}

impl Sv2Writer {
    fn new(io: OwnedWriteHalf, cipher: SendCipher) -> Self {
        Self {
            io,
            cipher,
            out: Vec::new(),
            written: 0,
        }
    }

    /// Encodes, encrypts and writes one message.
    ///
    /// If the future is dropped mid-write, the stream stays consistent: the rest of that frame
    /// is written at the start of the next `send` (so the message may still be delivered).
    pub async fn send(&mut self, message: &Message) -> Result<(), Sv2Error> {
        self.write_pending().await?;
        let frame = encode_frame(message)?;
        self.encrypt(message.name(), &frame, None)?;
        self.write_pending().await
    }

    /// Encodes and encrypts a message without writing it: queued frames go out together, in
    /// order, with the next [`Sv2Writer::flush`] or send (one write for a job's several frames).
    pub fn queue(&mut self, message: &Message) -> Result<(), Sv2Error> {
        let frame = encode_frame(message)?;
        self.encrypt(message.name(), &frame, None)
    }

    /// Queues a frame encoded once for many channels, with its channel id replaced by
    /// `channel_id` (the first payload field of every channel message). Refused for other
    /// frames.
    pub fn queue_for_channel(
        &mut self,
        frame: &EncodedFrame,
        channel_id: u32,
    ) -> Result<(), Sv2Error> {
        if !frame.is_channel_message() {
            return Err(Sv2Error::Encode {
                name: frame.name,
                detail: "not a channel message: no channel id to set".into(),
            });
        }
        self.encrypt(frame.name, &frame.bytes, Some(channel_id))
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> Result<(), Sv2Error> {
        self.write_pending().await
    }

    /// Encrypts and writes a frame encoded once with [`EncodedFrame::new`].
    pub async fn send_encoded(&mut self, frame: &EncodedFrame) -> Result<(), Sv2Error> {
        self.write_pending().await?;
        self.encrypt(frame.name, &frame.bytes, None)?;
        self.write_pending().await
    }

    /// Finishes writing a frame whose `send` was cancelled, then shuts the socket's write side.
    pub async fn shutdown(&mut self) -> Result<(), Sv2Error> {
        self.write_pending().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// Appends the ciphertext of `frame` to the output; with `channel_id`, the payload's first
    /// four bytes are replaced by it.
    fn encrypt(
        &mut self,
        name: &'static str,
        frame: &[u8],
        channel_id: Option<u32>,
    ) -> Result<(), Sv2Error> {
        let failed = |_| Sv2Error::Encode {
            name,
            detail: "encryption failed".into(),
        };
        let (header, payload) = frame.split_at(FRAME_HEADER_SIZE.min(frame.len()));
        let mut chunk =
            Vec::with_capacity(payload.len().min(SV2_FRAME_PLAINTEXT_CHUNK_SIZE) + AEAD_MAC_LEN);
        chunk.extend_from_slice(header);
        self.cipher.encrypt(&mut chunk).map_err(failed)?;
        self.out.extend_from_slice(&chunk);
        for (i, plain) in payload.chunks(SV2_FRAME_PLAINTEXT_CHUNK_SIZE).enumerate() {
            chunk.clear();
            chunk.extend_from_slice(plain);
            if let (0, Some(id)) = (i, channel_id) {
                chunk[..4].copy_from_slice(&id.to_le_bytes());
            }
            self.cipher.encrypt(&mut chunk).map_err(failed)?;
            self.out.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// Writes what is left of `out`. Cancel-safe: `write` either wrote `n` bytes or nothing.
    async fn write_pending(&mut self) -> Result<(), Sv2Error> {
        while self.written < self.out.len() {
            let n = self.io.write(&self.out[self.written..]).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > BUF_KEPT {
            self.out = Vec::new();
        }
        Ok(())
    }
}

/// Server side: runs the Noise NX handshake as responder, with a certificate valid for
/// `cert_validity` signed by `keys` (signed once and reused until half of that has passed; see
/// [`super::noise::NoiseResponder`]), with [`DEFAULT_HANDSHAKE_TIMEOUT`].
///
/// Returns once the initiator's first transport message (normally `SetupConnection`) has also
/// arrived and authenticated, so a peer that sends garbage, or an SV1 miner on an SV2 port, fails
/// here (protocol violation) instead of later; that message is the first [`Sv2Reader::recv`]
/// returns.
pub async fn accept(
    stream: TcpStream,
    keys: &AuthorityKeypair,
    cert_validity: Duration,
    limits: FrameLimits,
) -> Result<Sv2Connection, Sv2Error> {
    accept_with_timeout(
        stream,
        keys,
        cert_validity,
        limits,
        DEFAULT_HANDSHAKE_TIMEOUT,
    )
    .await
}

/// [`accept`] with an explicit handshake timeout.
pub async fn accept_with_timeout(
    stream: TcpStream,
    keys: &AuthorityKeypair,
    cert_validity: Duration,
    limits: FrameLimits,
    timeout: Duration,
) -> Result<Sv2Connection, Sv2Error> {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let validity = u32::try_from(cert_validity.as_secs()).unwrap_or(u32::MAX);
    let handshake = async move {
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = Vec::with_capacity(READ_CHUNK);
        read_initiator_hello(&mut rd, &mut buf).await?;
        let mut hello = [0u8; ELLSWIFT_ENCODING_SIZE];
        hello.copy_from_slice(&buf[..ELLSWIFT_ENCODING_SIZE]);
        buf.drain(..ELLSWIFT_ENCODING_SIZE);
        let (reply, ciphers) = keys
            .noise_responder()
            .respond(&hello, validity, unix_now())
            .map_err(|e| Sv2Error::Handshake(format!("responder step failed: {e}")))?;
        wr.write_all(&reply).await?;
        let mut reader = Sv2Reader::new(rd, RecvCipher::Own(ciphers.decryptor), limits, buf);
        let first = reader.recv().await?;
        reader.pending = Some(Box::new(first));
        Ok(Sv2Connection {
            reader,
            writer: Sv2Writer::new(wr, SendCipher::Own(ciphers.encryptor)),
            peer,
        })
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result,
        Err(_) => Err(Sv2Error::HandshakeTimeout(timeout)),
    }
}

/// Reads the initiator's 64-byte ElligatorSwift key into `buf` (which may receive more).
/// Recognises Stratum V1 JSON early, for a clear error instead of a timeout.
async fn read_initiator_hello(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<(), Sv2Error> {
    while buf.len() < ELLSWIFT_ENCODING_SIZE {
        let n = rd.read_buf(buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Sv2Error::Closed
            } else {
                Sv2Error::Handshake(format!(
                    "peer closed after {} of {ELLSWIFT_ENCODING_SIZE} handshake bytes",
                    buf.len()
                ))
            });
        }
        if looks_like_sv1(buf) {
            return Err(Sv2Error::Handshake(
                "peer speaks Stratum V1 (JSON) on an SV2 port".into(),
            ));
        }
    }
    Ok(())
}

/// An ElligatorSwift encoding is uniformly random; one starting with `{"` and containing
/// `mining.` is, for practical purposes, never a real key.
fn looks_like_sv1(bytes: &[u8]) -> bool {
    bytes.starts_with(b"{\"") && bytes.windows(7).any(|w| w == b"mining.")
}

/// Client side: runs the Noise NX handshake as initiator, with [`DEFAULT_HANDSHAKE_TIMEOUT`].
///
/// With `expected`, the server's certificate must be signed by that authority key, else
/// [`Sv2Error::AuthorityMismatch`] (or [`Sv2Error::CertificateExpired`] when only its validity
/// window is wrong). With `None` any server is accepted, encrypted but unauthenticated (logged
/// as a warning).
pub async fn connect(
    stream: TcpStream,
    expected: Option<&AuthorityPublicKey>,
    limits: FrameLimits,
) -> Result<Sv2Connection, Sv2Error> {
    connect_with_timeout(stream, expected, limits, DEFAULT_HANDSHAKE_TIMEOUT).await
}

/// [`connect`] with an explicit handshake timeout.
pub async fn connect_with_timeout(
    stream: TcpStream,
    expected: Option<&AuthorityPublicKey>,
    limits: FrameLimits,
    timeout: Duration,
) -> Result<Sv2Connection, Sv2Error> {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let expected = expected.copied();
    let handshake = async move {
        let mut initiator = match &expected {
            Some(key) => Initiator::new(Some(key.x_only())),
            None => {
                tracing::warn!(
                    peer = ?peer,
                    "SV2 server not authenticated: no authority public key configured"
                );
                Initiator::without_pk()
                    .map_err(|e| Sv2Error::Handshake(format!("initiator setup failed: {e:?}")))?
            }
        };
        let hello = initiator
            .step_0()
            .map_err(|e| Sv2Error::Handshake(format!("initiator step failed: {e:?}")))?;
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(&hello).await?;
        let mut reply = [0u8; INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE];
        read_handshake_reply(&mut rd, &mut reply).await?;
        let now = unix_now();
        let engine = match initiator.step_2_with_now(reply, now) {
            Ok(engine) => engine,
            Err(noise_sv2::Error::InvalidCertificate(cert)) => {
                return Err(if cert.version != noise_sv2::CERTIFICATE_VERSION {
                    Sv2Error::Handshake(format!("unknown certificate version {}", cert.version))
                } else if cert.valid_from.saturating_sub(CERT_TIME_LEEWAY) > now
                    || cert.not_valid_after.saturating_add(CERT_TIME_LEEWAY) < now
                {
                    Sv2Error::CertificateExpired {
                        valid_from: cert.valid_from,
                        not_valid_after: cert.not_valid_after,
                        now,
                    }
                } else {
                    match expected {
                        Some(expected) => Sv2Error::AuthorityMismatch { expected },
                        None => Sv2Error::Handshake("certificate rejected".into()),
                    }
                })
            }
            Err(e) => {
                return Err(Sv2Error::Handshake(format!(
                    "server handshake message rejected: {e:?}"
                )))
            }
        };
        let (encryptor, decryptor) = engine.into_split();
        Ok(Sv2Connection {
            reader: Sv2Reader::new(rd, RecvCipher::Sri(decryptor), limits, Vec::new()),
            writer: Sv2Writer::new(wr, SendCipher::Sri(encryptor)),
            peer,
        })
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result,
        Err(_) => Err(Sv2Error::HandshakeTimeout(timeout)),
    }
}

async fn read_handshake_reply(rd: &mut OwnedReadHalf, reply: &mut [u8]) -> Result<(), Sv2Error> {
    let mut got = 0;
    while got < reply.len() {
        let n = rd.read(&mut reply[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                Sv2Error::Closed
            } else {
                Sv2Error::Handshake(format!(
                    "server closed after {got} of {} handshake bytes",
                    reply.len()
                ))
            });
        }
        got += n;
    }
    Ok(())
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send + 'static>() {}

    #[test]
    fn halves_can_move_between_tasks() {
        assert_send::<Sv2Reader>();
        assert_send::<Sv2Writer>();
        assert_send::<Sv2Connection>();
    }

    #[test]
    fn sv1_json_is_recognised() {
        assert!(looks_like_sv1(
            br#"{"id":1,"method":"mining.subscribe","params":[]}"#
        ));
        assert!(!looks_like_sv1(&[0x7b; 64]));
    }
}
