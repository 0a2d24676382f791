//! Caller-owned, reusable packet buffer with headroom for in-place encapsulation.

/// Bytes reserved in front of a received frame, so headers can be pushed without copying.
pub const HEADROOM: usize = 128;
/// Largest frame a buffer holds (a 64 KiB super-frame plus a virtio-net header and some slack).
pub const MAX_FRAME: usize = 65536 + 128;

/// A fixed-capacity byte buffer: `HEADROOM` bytes in front, then the frame.
///
/// The data is `buf[start..end]`. Nothing here allocates after [`PacketBuf::new`].
pub struct PacketBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("start", &self.start)
            .field("len", &self.len())
            .finish()
    }
}

impl PacketBuf {
    pub fn new() -> Self {
        PacketBuf {
            buf: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(),
            start: HEADROOM,
            end: HEADROOM,
        }
    }

    /// A buffer holding a copy of `frame` (tests and simulations).
    pub fn from_slice(frame: &[u8]) -> Self {
        let mut b = Self::new();
        let n = frame.len().min(MAX_FRAME);
        b.read_space()[..n].copy_from_slice(&frame[..n]);
        b.set_len(n);
        b
    }

    /// Resets the buffer (data starts after the headroom, empty) and returns the space to read a
    /// frame into. Follow with [`PacketBuf::set_len`].
    pub fn read_space(&mut self) -> &mut [u8] {
        self.start = HEADROOM;
        self.end = HEADROOM;
        &mut self.buf[HEADROOM..]
    }

    /// Sets the data length (from the current start), clamped to the capacity.
    pub fn set_len(&mut self, n: usize) {
        self.end = (self.start + n).min(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes available in front of the data.
    pub fn headroom(&self) -> usize {
        self.start
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Grows the data by `n` bytes at the front and returns them. If the headroom is smaller
    /// than `n`, the data is moved back first (never panics for `n <= HEADROOM`; larger
    /// requests that cannot fit return as many bytes as there is room for).
    pub fn push_front(&mut self, n: usize) -> &mut [u8] {
        if n > self.start {
            let len = self.len();
            let new_start = n.min(self.buf.len() - len);
            self.buf.copy_within(self.start..self.end, new_start);
            self.start = new_start;
            self.end = new_start + len;
        }
        let n = n.min(self.start);
        self.start -= n;
        &mut self.buf[self.start..self.start + n]
    }

    /// Makes the data the `len` bytes at `offset` in the read space (clamped to it): after one
    /// receive of several datagrams back to back (UDP GRO), each is processed in place.
    pub fn select(&mut self, offset: usize, len: usize) {
        let max = self.buf.len();
        self.start = (HEADROOM + offset).min(max);
        self.end = (self.start + len).min(max);
    }

    /// Removes `n` bytes from the front (at most the whole data).
    pub fn pull_front(&mut self, n: usize) {
        self.start += n.min(self.len());
    }

    /// Shortens the data to `n` bytes (no-op if already shorter).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.end = self.start + n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pull() {
        let mut b = PacketBuf::from_slice(&[1, 2, 3]);
        assert_eq!(b.headroom(), HEADROOM);
        b.push_front(2).copy_from_slice(&[9, 8]);
        assert_eq!(b.data(), &[9, 8, 1, 2, 3]);
        b.pull_front(2);
        assert_eq!(b.data(), &[1, 2, 3]);
        b.pull_front(100);
        assert!(b.is_empty());
    }

    #[test]
    fn push_beyond_headroom_moves_data() {
        let mut b = PacketBuf::from_slice(&[1, 2, 3]);
        b.push_front(HEADROOM + 10).fill(0);
        assert_eq!(b.len(), HEADROOM + 13);
        assert_eq!(&b.data()[HEADROOM + 10..], &[1, 2, 3]);
    }

    #[test]
    fn select_windows_the_read_space() {
        let mut b = PacketBuf::new();
        b.read_space()[..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        b.select(2, 3);
        assert_eq!(b.data(), &[3, 4, 5]);
        assert_eq!(b.headroom(), HEADROOM + 2);
        b.select(MAX_FRAME - 1, 10);
        assert_eq!(b.len(), 1);
        b.select(usize::MAX / 2, 10);
        assert!(b.is_empty());
    }

    #[test]
    fn read_space_resets() {
        let mut b = PacketBuf::from_slice(&[1, 2, 3]);
        b.pull_front(1);
        let n = b.read_space().len();
        assert_eq!(n, MAX_FRAME);
        b.set_len(usize::MAX / 2);
        assert_eq!(b.len(), MAX_FRAME);
    }
}
