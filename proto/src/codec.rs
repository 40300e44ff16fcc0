//! The gRPC codec of every service in the contract: prost encoding, as tonic's default codec, but with
//! small per-stream buffers. tonic gives each stream an 8 KiB encode and an 8 KiB decode buffer up front;
//! an aggregator holds one stream per node, and its acks are a few bytes, its agents' reports a few
//! hundred, so those buffers were the largest part of a connected agent's memory. Buffers still grow to
//! the largest message a stream carries (snapshots, consumer views); the yield threshold is tonic's.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of a stream.
pub const STREAM_BUFFER_BYTES: usize = 512;
/// Encoded bytes after which a stream yields to the transport (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// Prost encoding with [`STREAM_BUFFER_BYTES`] buffers (named by the generated code in `build.rs`).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
