//! Who is at the other end of the owner's socket: the peer's user, from the kernel
//! (`SO_PEERCRED`), never from anything the peer sends.

use std::os::unix::net::UnixStream;

/// This process's effective user.
pub(crate) fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether `stream`'s peer runs as `uid` (a peer the kernel cannot name is refused).
pub(crate) fn same_user(stream: &UnixStream, uid: u32) -> bool {
    rustix::net::sockopt::socket_peercred(stream).is_ok_and(|peer| peer.uid.as_raw() == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_of_this_process_is_this_user_and_of_no_other() {
        let (left, _right) = UnixStream::pair().expect("a socket pair");
        assert!(same_user(&left, own_uid()));
        assert!(!same_user(&left, own_uid().wrapping_add(1)));
    }
}
