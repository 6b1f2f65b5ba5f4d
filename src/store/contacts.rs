//! Contacts and blocked names.

use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use redb::ReadableTable;

use super::{BLOCKED, CONTACTS, Contact, REQUESTS, Raw, Store, StoreError, decode};

impl Store {
    /// Adds or replaces a contact.
    pub fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(CONTACTS)?;
            t.insert(contact.name.as_str(), codec::to_cbor(contact).as_slice())?;
            // A contact is accepted: what they sent is no longer a request.
            txn.open_table(REQUESTS)?.remove(contact.name.as_str())?;
            Ok(())
        })
    }

    /// A contact by name.
    pub fn contact(&self, name: &ScreenName) -> Result<Option<Contact>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(CONTACTS)?;
            let v = t.get(name.as_str())?;
            v.map(|v| decode(v.value())).transpose()
        })
    }

    /// Removes a contact; false if it was not one.
    pub fn remove_contact(&self, name: &ScreenName) -> Result<bool, StoreError> {
        self.write(|txn| Ok(txn.open_table(CONTACTS)?.remove(name.as_str())?.is_some()))
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(CONTACTS)?.iter()? {
                out.push(decode(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    /// Blocks or unblocks a name; returns whether anything changed.
    pub fn set_blocked(
        &self,
        name: &ScreenName,
        blocked: bool,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(BLOCKED)?;
            Ok(if blocked {
                t.insert(name.as_str(), now)?.is_none()
            } else {
                t.remove(name.as_str())?.is_some()
            })
        })
    }

    /// Every blocked name.
    pub fn blocked(&self) -> Result<Vec<ScreenName>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(BLOCKED)?.iter()? {
                let (k, _) = entry?;
                out.push(
                    ScreenName::parse_normal(k.value()).map_err(|e| Raw::Decode(e.to_string()))?,
                );
            }
            Ok(out)
        })
    }
}
