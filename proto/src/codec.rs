//! The prost codec with small first buffers. tonic starts every call's encode and decode
//! buffer at 8 KiB and a stream keeps both for its whole life: a coordinator holding 10,000
//! agent sessions kept 160 MB in them, for messages that are mostly a few hundred bytes.
//! A buffer still grows to fit a larger message (up to `MAX_MESSAGE_BYTES`).

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffer.
const FIRST_BUFFER_BYTES: usize = 1024;
/// Encoded bytes a stream gathers before it yields to the connection (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// `tonic_prost::ProstCodec` with [`FIRST_BUFFER_BYTES`]; the generated stubs use it.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
