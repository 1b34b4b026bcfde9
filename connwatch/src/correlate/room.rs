//! Boxed slices used from the front and grown by doubling: a socket's facts and timeline.
//! A `Vec` would also keep its length and capacity (16 bytes more per field); the callers know
//! how much they use (the facts present; the timeline's entries up to a zero byte).

/// Makes room for `extra` more elements after the `used` first of `slots`: `first` at the
/// first, then at least twice the room. New room holds `T::default()`. Growing by one each
/// time made every new fact a reallocation: under connection churn that was 40% of connwatch's
/// CPU (`perf`, 4 churners on 2 CPUs), and the ring buffer overflowed.
pub fn make_room<T: Copy + Default>(slots: &mut Box<[T]>, used: usize, extra: usize, first: usize) {
    let needed = used + extra;
    if needed <= slots.len() {
        return;
    }
    let room = if slots.is_empty() { first } else { slots.len() * 2 }.max(needed);
    let mut grown = vec![T::default(); room].into_boxed_slice();
    grown[..used].copy_from_slice(&slots[..used]);
    *slots = grown;
}

#[cfg(test)]
mod tests {
    use super::make_room;

    #[test]
    fn room_starts_at_first_then_doubles_and_keeps_what_is_used() {
        let mut slots: Box<[u8]> = Box::default();
        make_room(&mut slots, 0, 1, 3);
        assert_eq!(slots.len(), 3);
        slots[..3].copy_from_slice(&[1, 2, 3]);
        make_room(&mut slots, 3, 1, 3);
        assert_eq!(&slots[..], [1, 2, 3, 0, 0, 0]);
        make_room(&mut slots, 4, 2, 3);
        assert_eq!(slots.len(), 6, "enough room already");
        make_room(&mut slots, 6, 20, 3);
        assert_eq!(slots.len(), 26, "more than twice when more is asked");
        assert_eq!(&slots[..3], [1, 2, 3]);
    }
}
