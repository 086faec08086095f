//! The codec of every generated client and server: prost, as tonic's own,
//! with 1 KiB message buffers instead of 8 KiB.
//!
//! tonic allocates an encode and a decode buffer of `buffer_size` for every
//! call on each side (four per unary RPC between two of our processes). At
//! 8 KiB those come from glibc's general heap, where freeing them costs
//! consolidation work; at 1 KiB they come from its per-thread cache. (The
//! services allocate with mimalloc, where the size matters less; a Rust
//! client on the system allocator still gains.) Our messages are mostly a few hundred bytes; a larger one grows
//! its buffer as it is written, as with any size.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Bytes each message buffer starts with.
pub const BUFFER_SIZE: usize = 1024;

/// tonic's own: how many bytes a streaming encoder buffers before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers (see the module docs).
#[derive(Debug, Clone)]
pub struct LockboxCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LockboxCodec<T, U> {
    fn default() -> Self {
        LockboxCodec(PhantomData)
    }
}

impl<T, U> Codec for LockboxCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::Encoder;

    #[test]
    fn buffers_start_at_one_kib() {
        use tonic::codec::Decoder;
        let mut codec = LockboxCodec::<prost_types::Duration, prost_types::Duration>::default();
        // The fields are private; their Debug shows them.
        let want = format!("buffer_size: {BUFFER_SIZE}, yield_threshold: {YIELD_THRESHOLD}");
        for got in [
            format!("{:?}", codec.encoder().buffer_settings()),
            format!("{:?}", codec.decoder().buffer_settings()),
        ] {
            assert!(got.contains(&want), "{got}");
        }
    }
}
