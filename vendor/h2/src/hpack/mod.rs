mod decoder;
mod encoder;
pub(crate) mod header;
pub(crate) mod huffman;
mod table;

#[cfg(test)]
mod test;

pub use self::decoder::{Decoder, DecoderError, NeedMore};
// veer patch: the HPACK state of a parked connection.
pub(crate) use self::decoder::ParkedDecoder;
pub use self::encoder::Encoder;
pub(crate) use self::encoder::ParkedEncoder;
pub use self::header::{BytesStr, Header};
