//! The gRPC codec of every service in the contract: prost encoding, as tonic's default codec, but with
//! small per-stream buffers. tonic gives each stream an 8 KiB encode and an 8 KiB decode buffer up front;
//! an aggregator holds one stream per node, and its acks are a few bytes, its agents' reports a few
//! hundred, so those buffers were the largest part of a connected agent's memory. Buffers still grow to
//! the largest message a stream carries (consumer views; an agent sends reports in [`parts`](crate::parts)
//! of about 1 KiB, so an agent stream's stay small).
//!
//! The yield threshold is small too: tonic coalesces messages that are ready at once into one chunk until
//! the threshold, and a chunk travels as one HTTP/2 DATA frame (up to 16 KiB), which the receiving side
//! reads whole into its decode buffer. With tonic's 32 KiB the parts of a snapshot, queued together,
//! would reach the aggregator as one 12 KiB frame and grow its buffers as the whole snapshot did.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of a stream.
pub const STREAM_BUFFER_BYTES: usize = 512;
/// Encoded bytes after which a stream yields a chunk to the transport (tonic's default is 32 KiB): a
/// chunk is then at most about two parts of a report.
pub const YIELD_THRESHOLD_BYTES: usize = crate::parts::PART_BYTES;

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
