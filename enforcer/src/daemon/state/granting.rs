//! Grant operations: add, revoke and list temporary exceptions, each recorded in the
//! audit stream.

use super::*;

impl State {
    pub(super) fn grant_record(&self, action: &'static str, g: &Grant, late: bool) {
        let mut v = describe(g, now_unix());
        if let Some(m) = v.as_object_mut() {
            m.insert("ts".into(), crate::clock::now_rfc3339_nanos().into());
            m.insert("event".into(), "grant".into());
            m.insert("action".into(), action.into());
            m.insert("policy".into(), self.generation.into());
            m.remove("seconds_left");
            if action == "expired" {
                m.insert(
                    "expired_at".into(),
                    crate::clock::rfc3339(g.expires_unix).into(),
                );
                m.insert("late".into(), late.into());
            }
        }
        let _ = self.audit.send(AuditMsg::Json(v));
    }

    /// `enforcer grant`: allow a source or cgroup on a rule until a deadline.
    pub fn grant(
        &mut self,
        rule: &str,
        from: Option<&str>,
        cgroup: Option<&str>,
        secs: u64,
        reason: &str,
    ) -> Result<Value, String> {
        let g = self
            .grants
            .add(&self.policy, rule, from, cgroup, secs, reason)?;
        let persisted = self.grants.save().map_err(|e| format!("{e:#}"));
        let applied = persisted.and_then(|_| {
            let p = self.policy.clone();
            self.apply(p).map(|_| ()).map_err(|e| format!("{e:#}"))
        });
        if let Err(e) = applied {
            self.grants.remove(&g.id);
            let _ = self.grants.save();
            return Err(format!("grant not applied: {e}"));
        }
        self.grant_record("granted", &g, false);
        info!(id = g.id, rule, reason, "grant applied");
        Ok(json!({"grant": describe(&g, now_unix()), "generation": self.generation}))
    }

    pub fn revoke(&mut self, id: &str) -> Result<Value, String> {
        let g = self
            .grants
            .remove(id)
            .ok_or_else(|| format!("no grant {id:?} (see `enforcer grants`)"))?;
        if let Err(e) = self.grants.save() {
            warn!("saving grants: {e:#}");
        }
        let p = self.policy.clone();
        self.apply(p).map_err(|e| format!("{e:#}"))?;
        self.grant_record("revoked", &g, false);
        info!(id, "grant revoked");
        Ok(json!({"revoked": describe(&g, now_unix()), "generation": self.generation}))
    }

    pub fn list_grants(&self) -> Value {
        let now = now_unix();
        let list: Vec<Value> = self
            .grants
            .grants
            .iter()
            .map(|g| {
                let mut v = describe(g, now);
                let active = self.policy.verdict.rules.iter().any(|r| r.name == g.rule);
                v["active"] = active.into();
                v
            })
            .collect();
        json!({"grants": list})
    }
}
