//! A grant as data: one more allow entry on a named rule, until a deadline. The store that
//! keeps them (and their ids) is `crate::grants`.

use serde::{Deserialize, Serialize};

use super::Entry;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub rule: String,
    pub entry: Entry,
    pub reason: String,
    pub created_unix: u64,
    pub expires_unix: u64,
}
