//! A user VM's owner keys: who may open its consoles through an owner
//! session in L0 (docs/console-protocol.md, "Owner sessions").
//!
//! The VM sets the first key itself (`OWNER_KEY_ADD` from L2); that first
//! registration is final like a tag's: the same key with the same access
//! again is accepted (an agent may repeat it), anything else is
//! [`OwnerKeyError::KeysSet`]. At most [`MAX_OWNER_KEYS`] keys. The keys
//! travel in the sealed device set (format in [`OwnerKeys::encode`]).

use alloc::vec::Vec;

use ultracall_abi::{KeyAccess, OwnerKey, Status, MAX_OWNER_KEYS};

use crate::error::Error;
use crate::registry::VmDevices;
use crate::wire::{Reader, Writer};

/// Bytes one key takes in the sealed form: access, then the key.
pub const KEY_RECORD_LEN: usize = 1 + 32;

/// Why a key was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKeyError {
    /// The VM already has keys and this one is not among them as given.
    KeysSet,
    /// The VM holds [`MAX_OWNER_KEYS`] keys.
    Full,
    /// The VM does not know the key.
    Unknown,
    /// It is the VM's last `rw` key: nobody could manage its keys after.
    LastReadWrite,
}

impl OwnerKeyError {
    /// The ultracall status.
    pub fn status(self) -> Status {
        match self {
            OwnerKeyError::KeysSet
            | OwnerKeyError::Full
            | OwnerKeyError::Unknown
            | OwnerKeyError::LastReadWrite => Status::OwnerKeysSet,
        }
    }
}

/// `OWNER_KEY_ADD` from the VM: its first key, final once set. A frozen
/// VM (its devices, keys included, were sealed for a migration) adds
/// none: the key would not travel. Returns the number of keys held.
pub fn register_first_key(
    vm: &mut VmDevices,
    key: OwnerKey,
    access: KeyAccess,
) -> Result<usize, Status> {
    if vm.is_frozen() {
        return Err(Status::DeviceFrozen);
    }
    vm.owner_keys_mut()
        .add_first(key, access)
        .map_err(OwnerKeyError::status)
}

/// The keys of one VM, in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerKeys {
    keys: Vec<(OwnerKey, KeyAccess)>,
}

impl OwnerKeys {
    /// The keys and their access.
    pub fn iter(&self) -> impl Iterator<Item = &(OwnerKey, KeyAccess)> {
        self.keys.iter()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the VM has no key (no owner session can open).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The access `key` has, if the VM knows it.
    pub fn access_of(&self, key: &OwnerKey) -> Option<KeyAccess> {
        self.keys.iter().find(|(k, _)| k == key).map(|&(_, a)| a)
    }

    /// The VM's own registration: its first key, final once set. Returns
    /// the number of keys held.
    pub fn add_first(&mut self, key: OwnerKey, access: KeyAccess) -> Result<usize, OwnerKeyError> {
        match self.keys.first() {
            None => {
                self.keys.push((key, access));
                Ok(1)
            }
            Some(&(k, a)) if k == key && a == access => Ok(self.keys.len()),
            Some(_) => Err(OwnerKeyError::KeysSet),
        }
    }

    /// A further key, added through a session opened with an `rw` key;
    /// a known key gets the new access.
    pub fn add_more(&mut self, key: OwnerKey, access: KeyAccess) -> Result<usize, OwnerKeyError> {
        if let Some(slot) = self.keys.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = access;
            return Ok(self.keys.len());
        }
        if self.keys.len() == MAX_OWNER_KEYS {
            return Err(OwnerKeyError::Full);
        }
        self.keys.push((key, access));
        Ok(self.keys.len())
    }

    /// Removes a key (through a session opened with an `rw` key), never
    /// the last `rw` one. Returns the number of keys left.
    pub fn remove(&mut self, key: &OwnerKey) -> Result<usize, OwnerKeyError> {
        let i = self
            .keys
            .iter()
            .position(|(k, _)| k == key)
            .ok_or(OwnerKeyError::Unknown)?;
        let rw_left = self
            .keys
            .iter()
            .enumerate()
            .filter(|&(j, &(_, a))| j != i && a == KeyAccess::ReadWrite)
            .count();
        if rw_left == 0 {
            return Err(OwnerKeyError::LastReadWrite);
        }
        self.keys.remove(i);
        Ok(self.keys.len())
    }

    /// Sealed form: `u8 count`, then per key `u8 access, 32 bytes key`.
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(&[self.keys.len() as u8]);
        for (k, a) in &self.keys {
            w.bytes(&[a.raw()]);
            w.bytes(&k.0);
        }
    }

    /// Reads the sealed form; every field is checked.
    pub(crate) fn decode(r: &mut Reader) -> Result<OwnerKeys, Error> {
        let n = usize::from(r.u8()?);
        if n > MAX_OWNER_KEYS {
            return Err(Error::StateField("owner key count"));
        }
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let access = KeyAccess::from_raw(u64::from(r.u8()?))
                .ok_or(Error::StateField("owner key access"))?;
            let mut k = [0u8; 32];
            k.copy_from_slice(r.take(32)?);
            let key = OwnerKey::from_bytes(k).map_err(|_| Error::StateField("owner key"))?;
            if keys.iter().any(|&(o, _)| o == key) {
                return Err(Error::StateField("owner key repeated"));
            }
            keys.push((key, access));
        }
        Ok(OwnerKeys { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> OwnerKey {
        OwnerKey([b; 32])
    }

    #[test]
    fn the_first_key_is_final() {
        let mut ks = OwnerKeys::default();
        assert_eq!(ks.add_first(key(1), KeyAccess::ReadWrite), Ok(1));
        assert_eq!(ks.add_first(key(1), KeyAccess::ReadWrite), Ok(1));
        assert_eq!(
            ks.add_first(key(1), KeyAccess::ReadOnly),
            Err(OwnerKeyError::KeysSet)
        );
        assert_eq!(
            ks.add_first(key(2), KeyAccess::ReadWrite),
            Err(OwnerKeyError::KeysSet)
        );
        assert_eq!(ks.len(), 1);
        assert_eq!(ks.access_of(&key(1)), Some(KeyAccess::ReadWrite));
        assert_eq!(ks.access_of(&key(2)), None);
    }

    #[test]
    fn a_frozen_vm_adds_no_key() {
        let mut vm = VmDevices::new(crate::registry::pc_uarts());
        assert_eq!(
            register_first_key(&mut vm, key(1), KeyAccess::ReadWrite),
            Ok(1)
        );
        assert_eq!(
            register_first_key(&mut vm, key(2), KeyAccess::ReadWrite),
            Err(Status::OwnerKeysSet)
        );
        let mut frozen = VmDevices::new(crate::registry::pc_uarts());
        frozen.freeze_for_test();
        assert_eq!(
            register_first_key(&mut frozen, key(1), KeyAccess::ReadWrite),
            Err(Status::DeviceFrozen)
        );
        assert!(frozen.owner_keys().is_empty());
    }

    #[test]
    fn more_keys_are_bounded() {
        let mut ks = OwnerKeys::default();
        for i in 0..MAX_OWNER_KEYS {
            assert_eq!(
                ks.add_more(key(i as u8 + 1), KeyAccess::ReadOnly),
                Ok(i + 1)
            );
        }
        assert_eq!(
            ks.add_more(key(200), KeyAccess::ReadOnly),
            Err(OwnerKeyError::Full)
        );
        // A known key changes its access, even when full.
        assert_eq!(
            ks.add_more(key(1), KeyAccess::ReadWrite),
            Ok(MAX_OWNER_KEYS)
        );
        assert_eq!(ks.access_of(&key(1)), Some(KeyAccess::ReadWrite));
    }

    fn encoded(ks: &OwnerKeys) -> Vec<u8> {
        let mut w = Writer::with_capacity(0);
        ks.encode(&mut w);
        w.buf
    }

    #[test]
    fn keys_are_removed_but_never_the_last_rw_one() {
        let mut ks = OwnerKeys::default();
        ks.add_first(key(1), KeyAccess::ReadWrite).unwrap();
        ks.add_more(key(2), KeyAccess::ReadOnly).unwrap();
        assert_eq!(ks.remove(&key(1)), Err(OwnerKeyError::LastReadWrite));
        assert_eq!(ks.remove(&key(9)), Err(OwnerKeyError::Unknown));
        ks.add_more(key(3), KeyAccess::ReadWrite).unwrap();
        // Rotation: the new rw key in, the old one out.
        assert_eq!(ks.remove(&key(1)), Ok(2));
        assert_eq!(ks.access_of(&key(1)), None);
        assert_eq!(ks.remove(&key(2)), Ok(1));
        assert_eq!(ks.remove(&key(3)), Err(OwnerKeyError::LastReadWrite));
    }

    #[test]
    fn sealed_form_round_trips() {
        let mut ks = OwnerKeys::default();
        ks.add_first(key(5), KeyAccess::ReadWrite).unwrap();
        ks.add_more(key(6), KeyAccess::ReadOnly).unwrap();
        let bytes = encoded(&ks);
        assert_eq!(bytes.len(), 1 + 2 * KEY_RECORD_LEN);
        let mut r = Reader::new(&bytes);
        assert_eq!(OwnerKeys::decode(&mut r), Ok(ks));
        r.finish().unwrap();
    }

    #[test]
    fn each_bad_field_is_refused() {
        let mut ks = OwnerKeys::default();
        ks.add_first(key(5), KeyAccess::ReadWrite).unwrap();
        ks.add_more(key(6), KeyAccess::ReadOnly).unwrap();
        let good = encoded(&ks);
        let decode = |b: &[u8]| OwnerKeys::decode(&mut Reader::new(b));
        let mut count = good.clone();
        count[0] = MAX_OWNER_KEYS as u8 + 1;
        assert_eq!(decode(&count), Err(Error::StateField("owner key count")));
        let mut access = good.clone();
        access[1] = 3;
        assert_eq!(decode(&access), Err(Error::StateField("owner key access")));
        let mut zero = good.clone();
        zero[2..34].fill(0);
        assert_eq!(decode(&zero), Err(Error::StateField("owner key")));
        let mut twice = good.clone();
        twice[35..67].fill(5);
        assert_eq!(decode(&twice), Err(Error::StateField("owner key repeated")));
        assert_eq!(decode(&good[..40]), Err(Error::StateTruncated));
    }
}
