//! Buffers a connection lends back while it is idle (a veer patch: see
//! VEER-PATCHES.md at the crate's root).
//!
//! A connection holds its read buffer, its write buffer and its HPACK
//! scratch buffer only while bytes move. When a read would block with
//! nothing buffered, or a flush has written everything, the buffer goes back
//! to a small pool of the current thread, and the next read or write takes
//! one from there (or allocates one when the pool is empty). An idle
//! connection then holds none of them, and a busy one trades its buffers
//! with the pool without allocating.

use bytes::BytesMut;
use std::cell::RefCell;
use std::thread::LocalKey;

/// Buffers of each kind a thread keeps; more are freed.
const KEEP: usize = 8;

type Local = RefCell<Vec<BytesMut>>;

thread_local! {
    static READ_POOL: Local = const { RefCell::new(Vec::new()) };
    static WRITE_POOL: Local = const { RefCell::new(Vec::new()) };
    static HPACK_POOL: Local = const { RefCell::new(Vec::new()) };
}

/// One kind of buffer and its pool.
pub(crate) struct Kind {
    /// The capacity of a new buffer.
    capacity: usize,
    /// A buffer with less room than this is freed rather than kept (a read
    /// buffer's room is what is left after the frames split off it).
    min_room: usize,
    /// A buffer grown past this (for a large frame) is freed rather than kept.
    max_room: usize,
    local: &'static LocalKey<Local>,
}

/// The frame reader's buffer (tokio-util's `FramedRead` starts with 8 KiB).
pub(crate) static READ: Kind = Kind {
    capacity: 8 * 1024,
    min_room: 1024,
    max_room: 16 * 1024,
    local: &READ_POOL,
};

/// The frame writer's buffer (room for a 16 KiB frame, the smallest maximum).
pub(crate) static WRITE: Kind = Kind {
    capacity: 16 * 1024,
    min_room: 16 * 1024,
    max_room: 32 * 1024,
    local: &WRITE_POOL,
};

/// The HPACK decoder's buffer for Huffman-decoded strings.
pub(crate) static HPACK: Kind = Kind {
    capacity: 4 * 1024,
    min_room: 512,
    max_room: 8 * 1024,
    local: &HPACK_POOL,
};

impl Kind {
    /// A buffer from this thread's pool, or a new one.
    pub(crate) fn take(&self) -> BytesMut {
        self.local
            .try_with(|pool| pool.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| BytesMut::with_capacity(self.capacity))
    }

    /// Moves `buf`, which must be empty, to this thread's pool (or frees
    /// it), leaving in its place a buffer that holds no memory.
    pub(crate) fn give(&self, buf: &mut BytesMut) {
        debug_assert!(buf.is_empty(), "a buffer given back still holds bytes");
        if buf.capacity() == 0 {
            return;
        }
        let buf = std::mem::take(buf);
        let room = buf.capacity();
        if room < self.min_room || room > self.max_room {
            return;
        }
        let _ = self.local.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() < KEEP {
                    pool.push(buf);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again() {
        let mut buf = WRITE.take();
        let at = buf.as_ptr();
        WRITE.give(&mut buf);
        assert_eq!(buf.capacity(), 0);
        let again = WRITE.take();
        assert_eq!(again.as_ptr(), at);
        assert!(again.capacity() >= 16 * 1024);
    }

    #[test]
    fn a_buffer_with_too_little_room_is_freed() {
        let mut buf = READ.take();
        buf.extend_from_slice(&[0; 8000]);
        let _frame = buf.split();
        READ.give(&mut buf);
        let fresh = READ.take();
        assert!(fresh.capacity() >= 8 * 1024);
    }

    #[test]
    fn the_pool_keeps_a_few() {
        let mut many: Vec<BytesMut> = (0..KEEP + 4).map(|_| HPACK.take()).collect();
        for buf in &mut many {
            HPACK.give(buf);
        }
        HPACK_POOL.with(|pool| assert_eq!(pool.borrow().len(), KEEP));
    }
}
