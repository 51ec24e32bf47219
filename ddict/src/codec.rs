//! Typed access over the byte-oriented DDict: a [`Codec`] turns a key or
//! value type into bytes and back; [`Typed`] pairs a client with one codec
//! for keys and one for values.

use crate::{Client, Error, Put};
use std::fmt;
use std::marker::PhantomData;

/// Bytes that do not decode as the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode a DDict value: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Converts `T` to bytes and back. Encodings of keys must be
/// deterministic: equal keys must encode to equal bytes (they are hashed
/// and compared as bytes).
pub trait Codec<T> {
    /// Encode `v`.
    fn encode(&self, v: &T) -> Vec<u8>;
    /// Decode bytes made by `encode`.
    fn decode(&self, b: &[u8]) -> Result<T, DecodeError>;
}

/// Bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec<Vec<u8>> for BytesCodec {
    fn encode(&self, v: &Vec<u8>) -> Vec<u8> {
        v.clone()
    }
    fn decode(&self, b: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(b.to_vec())
    }
}

/// UTF-8 strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrCodec;

impl Codec<String> for StrCodec {
    fn encode(&self, v: &String) -> Vec<u8> {
        v.as_bytes().to_vec()
    }
    fn decode(&self, b: &[u8]) -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|e| DecodeError(e.to_string()))
    }
}

/// `i64` as 8 little-endian bytes (the format of [`Client::fetch_add`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct I64Codec;

impl Codec<i64> for I64Codec {
    fn encode(&self, v: &i64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    fn decode(&self, b: &[u8]) -> Result<i64, DecodeError> {
        <[u8; 8]>::try_from(b).map(i64::from_le_bytes).map_err(|_| DecodeError(format!("{} bytes, not 8", b.len())))
    }
}

/// A client with typed keys and values.
pub struct Typed<K, V, KC: Codec<K>, VC: Codec<V>> {
    client: Client,
    kc: KC,
    vc: VC,
    _t: PhantomData<fn(K, V)>,
}

impl<K, V, KC: Codec<K>, VC: Codec<V>> fmt::Debug for Typed<K, V, KC, VC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed").field("client", &self.client).finish_non_exhaustive()
    }
}

/// Why a typed operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypedError {
    /// The DDict failed.
    DDict(Error),
    /// A stored value did not decode.
    Decode(DecodeError),
}

impl fmt::Display for TypedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedError::DDict(e) => write!(f, "{e}"),
            TypedError::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TypedError {}

impl From<Error> for TypedError {
    fn from(e: Error) -> Self {
        TypedError::DDict(e)
    }
}

impl<K, V, KC: Codec<K>, VC: Codec<V>> Typed<K, V, KC, VC> {
    /// Wrap `client`.
    pub fn new(client: Client, kc: KC, vc: VC) -> Self {
        Typed { client, kc, vc, _t: PhantomData }
    }

    /// The byte-level client.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Store `k` = `v`.
    pub fn put(&mut self, k: &K, v: &V) -> Result<Put, Error> {
        self.client.put(&self.kc.encode(k), &self.vc.encode(v))
    }

    /// The value of `k`.
    pub fn get(&mut self, k: &K) -> Result<Option<V>, TypedError> {
        let vc = &self.vc;
        match self.client.get_with(&self.kc.encode(k), |b| vc.decode(b))? {
            None => Ok(None),
            Some(r) => r.map(Some).map_err(TypedError::Decode),
        }
    }

    /// Remove `k`; whether it was present.
    pub fn delete(&mut self, k: &K) -> Result<bool, Error> {
        self.client.delete(&self.kc.encode(k))
    }

    /// Whether `k` is present.
    pub fn contains(&mut self, k: &K) -> Result<bool, Error> {
        self.client.contains(&self.kc.encode(k))
    }

    /// Every key.
    pub fn keys(&mut self) -> Result<Vec<K>, TypedError> {
        let raw = self.client.keys()?;
        raw.iter().map(|b| self.kc.decode(b).map_err(TypedError::Decode)).collect()
    }
}
