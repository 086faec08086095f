//! Random values that are not secret (feature `service`): identifiers,
//! salts, IVs. Shared by both services so each draws them the same way.

/// Fixed-size random array for values that are *not* secret (salts, IVs,
/// identifiers): operating-system CSPRNG output, fetched in blocks into a
/// per-thread pool instead of with one system call per value. Each byte is
/// handed out once and wiped from the pool. Never use it for key material.
pub fn public_random<const N: usize>() -> [u8; N] {
    use std::cell::RefCell;
    const POOL: usize = 1024;
    thread_local! {
        static BYTES: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
    }
    if N > POOL / 4 {
        return random_array::<N>();
    }
    let mut out = [0u8; N];
    BYTES.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if POOL - *used < N {
            getrandom::fill(bytes).expect("operating system random number generator failed");
            *used = 0;
        }
        let taken = &mut bytes[*used..*used + N];
        out.copy_from_slice(taken);
        taken.fill(0);
        *used += N;
    });
    out
}

/// A random (version 4) UUID from [`public_random`], for identifiers.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(public_random()).into_uuid()
}

/// Fixed-size random array straight from the operating system's CSPRNG.
fn random_array<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("operating system random number generator failed");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_not_repeated() {
        let ids: std::collections::BTreeSet<_> = (0..10_000).map(|_| random_uuid()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.get_version_num() == 4));
        let big: [u8; 512] = public_random();
        assert_ne!(big, [0u8; 512]);
    }
}
