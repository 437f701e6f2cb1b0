//! Who may do what: users (by the hash of their token), projects and their members, tokens made
//! for calling one service, and the audit trail of what they did ([`crate::api::access`] decides
//! from these).

use rusqlite::{OptionalExtension, params};

use corral_proto::api::{self, GlobalRole, ProjectRole};

use super::{Result, Store, now_ms};

/// Who a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    User {
        name: String,
        role: GlobalRole,
    },
    /// A token made with `corral token create --service RUN`: it calls that service, nothing else.
    Service {
        project: String,
        run: String,
    },
}

impl Caller {
    /// How the audit trail names it.
    pub fn label(&self) -> String {
        match self {
            Self::User { name, .. } => name.clone(),
            Self::Service { project, run } => format!("service:{project}/{run}"),
        }
    }
}

/// What [`Store::bootstrap_admin`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The token was known.
    Known,
    /// The `admin` user was made with it (a new database, or one from before users).
    Created,
    /// The token was added to the existing `admin` user (a database restored from elsewhere).
    Added,
}

fn role_of(text: &str) -> rusqlite::Result<ProjectRole> {
    ProjectRole::parse(text)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(0, text.to_owned(), rusqlite::types::Type::Text))
}

fn global_role_of(text: &str) -> rusqlite::Result<GlobalRole> {
    GlobalRole::parse(text)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(0, text.to_owned(), rusqlite::types::Type::Text))
}

impl Store {
    /// The token of the data dir's `admin-token` works whatever the database says: unknown, it
    /// becomes a token of the `admin` user (a global admin), made if missing.
    pub fn bootstrap_admin(&self, hash: &str) -> Result<Bootstrap> {
        let hash = hash.to_owned();
        self.write(move |conn| {
            let hash = hash.as_str();
            let tx = conn.savepoint()?;
            let known = tx.query_row("SELECT 1 FROM api_tokens WHERE hash = ?1", [hash], |_| Ok(())).optional()?;
            if known.is_some() {
                return Ok(Bootstrap::Known);
            }
            let now = now_ms();
            let made = tx.execute("INSERT OR IGNORE INTO users VALUES ('admin', 'admin', ?1)", [now])?;
            tx.execute(
                "INSERT INTO api_tokens (hash, name, created_ms, user) VALUES (?1, 'admin', ?2, 'admin')",
                params![hash, now],
            )?;
            tx.commit()?;
            Ok(if made > 0 { Bootstrap::Created } else { Bootstrap::Added })
        })
    }

    /// Who holds the token of this hash.
    pub fn caller(&self, hash: &str) -> Result<Option<Caller>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT u.name, u.global_role, t.service_project, t.service_run FROM api_tokens t \
             LEFT JOIN users u ON u.name = t.user WHERE t.hash = ?1",
        )?;
        let row = stmt
            .query_row([hash], |r| {
                let user: Option<String> = r.get(0)?;
                let role: Option<String> = r.get(1)?;
                let project: Option<String> = r.get(2)?;
                let run: Option<String> = r.get(3)?;
                Ok(match (user, role, project, run) {
                    (Some(name), Some(role), _, _) => Some(Caller::User { name, role: global_role_of(&role)? }),
                    (None, _, Some(project), Some(run)) => Some(Caller::Service { project, run }),
                    _ => None,
                })
            })
            .optional()?;
        Ok(row.flatten())
    }

    // --- users ---

    /// `false`: a user of that name exists, and nothing changed.
    pub fn create_user(&self, name: &str, role: GlobalRole, token_hash: &str) -> Result<bool> {
        let name = name.to_owned();
        let token_hash = token_hash.to_owned();
        self.write(move |conn| {
            let name = name.as_str();
            let token_hash = token_hash.as_str();
            let tx = conn.savepoint()?;
            let now = now_ms();
            if tx.execute("INSERT OR IGNORE INTO users VALUES (?1, ?2, ?3)", params![name, role.as_str(), now])? == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO api_tokens (hash, name, created_ms, user) VALUES (?1, ?2, ?3, ?2)",
                params![token_hash, name, now],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub fn user_role(&self, name: &str) -> Result<Option<GlobalRole>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT global_role FROM users WHERE name = ?1")?;
        Ok(stmt.query_row([name], |r| global_role_of(&r.get::<_, String>(0)?)).optional()?)
    }

    /// Every user, by name, with its projects.
    pub fn users(&self) -> Result<Vec<api::User>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT name, global_role, created_ms FROM users ORDER BY name")?;
        let mut users = stmt
            .query_map([], |r| {
                Ok(api::User {
                    name: r.get(0)?,
                    role: global_role_of(&r.get::<_, String>(1)?)?,
                    created_ms: r.get(2)?,
                    projects: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = conn.prepare_cached("SELECT user, project, role FROM members ORDER BY project")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                api::Membership { project: r.get(1)?, role: role_of(&r.get::<_, String>(2)?)? },
            ))
        })?;
        for row in rows {
            let (user, membership) = row?;
            if let Some(u) = users.iter_mut().find(|u| u.name == user) {
                u.projects.push(membership);
            }
        }
        Ok(users)
    }

    /// The projects a user is a member of, with its roles.
    pub fn memberships(&self, user: &str) -> Result<Vec<api::Membership>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT project, role FROM members WHERE user = ?1 ORDER BY project")?;
        let rows = stmt.query_map([user], |r| {
            Ok(api::Membership { project: r.get(0)?, role: role_of(&r.get::<_, String>(1)?)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn global_admins(&self) -> Result<u32> {
        Ok(self.read().query_row("SELECT COUNT(*) FROM users WHERE global_role = 'admin'", [], |r| r.get(0))?)
    }

    /// Removes a user with its tokens and memberships. `false`: there was none.
    pub fn delete_user(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            let name = name.as_str();
            let tx = conn.savepoint()?;
            tx.execute("DELETE FROM api_tokens WHERE user = ?1 OR created_by = ?1", [name])?;
            tx.execute("DELETE FROM members WHERE user = ?1", [name])?;
            let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Replaces a user's tokens with this one. `false`: there is no such user.
    pub fn replace_user_token(&self, name: &str, hash: &str) -> Result<bool> {
        let name = name.to_owned();
        let hash = hash.to_owned();
        self.write(move |conn| {
            let name = name.as_str();
            let hash = hash.as_str();
            let tx = conn.savepoint()?;
            if tx.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(())).optional()?.is_none() {
                return Ok(false);
            }
            tx.execute("DELETE FROM api_tokens WHERE user = ?1", [name])?;
            tx.execute(
                "INSERT INTO api_tokens (hash, name, created_ms, user) VALUES (?1, ?2, ?3, ?2)",
                params![hash, name, now_ms()],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    // --- projects and members ---

    /// Makes a project, with `owner` as its admin. `false`: it exists.
    pub fn create_project(&self, name: &str, owner: Option<&str>) -> Result<bool> {
        let name = name.to_owned();
        let owner = owner.map(str::to_owned);
        self.write(move |conn| {
            let name = name.as_str();
            let owner = owner.as_deref();
            let tx = conn.savepoint()?;
            if tx
                .execute("INSERT OR IGNORE INTO projects (name, created_ms) VALUES (?1, ?2)", params![name, now_ms()])?
                == 0
            {
                return Ok(false);
            }
            if let Some(owner) = owner {
                tx.execute("INSERT INTO members VALUES (?1, ?2, 'admin')", params![name, owner])?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    /// Every project with its member count and `user`'s role in it.
    pub fn projects(&self, user: &str) -> Result<Vec<api::Project>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT p.name, p.created_ms, (SELECT COUNT(*) FROM members m WHERE m.project = p.name), \
             (SELECT role FROM members m WHERE m.project = p.name AND m.user = ?1) FROM projects p ORDER BY p.name",
        )?;
        let rows = stmt.query_map([user], |r| {
            let role: Option<String> = r.get(3)?;
            Ok(api::Project {
                name: r.get(0)?,
                created_ms: r.get(1)?,
                members: r.get(2)?,
                role: role.as_deref().map(role_of).transpose()?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What still lives in a project and keeps it from being deleted: active runs, fleets, volumes.
    pub fn project_contents(&self, project: &str) -> Result<(u32, u32, u32)> {
        let conn = self.read();
        Ok(conn.query_row(
            &format!(
                "SELECT (SELECT COUNT(*) FROM runs r WHERE r.project = ?1 AND (r.replicas IS NOT NULL OR EXISTS \
                   (SELECT 1 FROM jobs j WHERE j.run_id = r.id AND j.state NOT IN {}))), \
                 (SELECT COUNT(*) FROM fleets WHERE project = ?1), (SELECT COUNT(*) FROM volumes WHERE project = ?1)",
                super::FINISHED_STATES
            ),
            [project],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// Deletes a project and what is left of it (finished runs, schedules, secrets, images,
    /// members, service tokens). Answers the ids of the jobs it had, whose logs go too.
    pub fn delete_project(&self, project: &str) -> Result<Vec<corral_proto::ids::JobId>> {
        let project = project.to_owned();
        self.write(move |conn| {
            let project = project.as_str();
            let tx = conn.savepoint()?;
            let jobs = {
                let mut stmt =
                    tx.prepare("SELECT j.id FROM jobs j JOIN runs r ON r.id = j.run_id WHERE r.project = ?1")?;
                stmt.query_map([project], |r| Ok(corral_proto::ids::JobId(r.get(0)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.execute("DELETE FROM jobs WHERE run_id IN (SELECT id FROM runs WHERE project = ?1)", [project])?;
            for table in ["runs", "schedules", "secrets", "members", "fleets", "volumes", "images"] {
                tx.execute(&format!("DELETE FROM {table} WHERE project = ?1"), [project])?;
            }
            tx.execute("DELETE FROM api_tokens WHERE service_project = ?1", [project])?;
            tx.execute("DELETE FROM projects WHERE name = ?1", [project])?;
            tx.commit()?;
            Ok(jobs)
        })
    }

    pub fn member_role(&self, project: &str, user: &str) -> Result<Option<ProjectRole>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT role FROM members WHERE project = ?1 AND user = ?2")?;
        Ok(stmt.query_row(params![project, user], |r| role_of(&r.get::<_, String>(0)?)).optional()?)
    }

    pub fn members(&self, project: &str) -> Result<Vec<api::Member>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT user, role FROM members WHERE project = ?1 ORDER BY user")?;
        let rows = stmt
            .query_map([project], |r| Ok(api::Member { user: r.get(0)?, role: role_of(&r.get::<_, String>(1)?)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_member(&self, project: &str, user: &str, role: ProjectRole) -> Result<()> {
        self.execute(
            "INSERT INTO members VALUES (?1, ?2, ?3) ON CONFLICT (project, user) DO UPDATE SET role = excluded.role",
            owned![project, user, role.as_str()],
        )?;
        Ok(())
    }

    /// Removes a member, and the service tokens it made in the project. `false`: it was none.
    pub fn remove_member(&self, project: &str, user: &str) -> Result<bool> {
        let project = project.to_owned();
        let user = user.to_owned();
        self.write(move |conn| {
            let project = project.as_str();
            let user = user.as_str();
            let tx = conn.savepoint()?;
            tx.execute(
                "DELETE FROM api_tokens WHERE service_project = ?1 AND created_by = ?2",
                params![project, user],
            )?;
            let n = tx.execute("DELETE FROM members WHERE project = ?1 AND user = ?2", params![project, user])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// The projects where `user` is the only admin.
    pub fn sole_admin_of(&self, user: &str) -> Result<Vec<String>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT m.project FROM members m WHERE m.user = ?1 AND m.role = 'admin' AND \
             (SELECT COUNT(*) FROM members o WHERE o.project = m.project AND o.role = 'admin') = 1 ORDER BY m.project",
        )?;
        let rows = stmt.query_map([user], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // --- service tokens ---

    /// A token for calling `project/run`, made by `created_by` (it goes when its maker leaves the
    /// project or is deleted).
    pub fn create_service_token(&self, hash: &str, project: &str, run: &str, created_by: Option<&str>) -> Result<()> {
        self.execute(
            "INSERT INTO api_tokens (hash, name, created_ms, service_project, service_run, created_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            owned![hash, format!("service:{project}/{run}"), now_ms(), project, run, created_by],
        )?;
        Ok(())
    }

    pub fn service_tokens(&self, project: &str) -> Result<Vec<api::ServiceToken>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT substr(hash, 1, 12), service_run, created_ms, created_by FROM api_tokens \
             WHERE service_project = ?1 ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([project], |r| {
            Ok(api::ServiceToken {
                id: r.get(0)?,
                run: r.get(1)?,
                created_ms: r.get(2)?,
                created_by: r.get(3)?,
                token: None,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes the project's service token whose id starts with `id`, when exactly one does;
    /// answers the ids that matched.
    pub fn delete_service_token(&self, project: &str, id: &str) -> Result<Vec<String>> {
        let project = project.to_owned();
        let id = id.to_owned();
        self.write(move |conn| {
            let project = project.as_str();
            let id = id.as_str();
            let tx = conn.savepoint()?;
            let pattern = format!("{}%", id.to_ascii_lowercase());
            let ids = {
                let mut stmt = tx.prepare(
                    "SELECT substr(hash, 1, 12) FROM api_tokens WHERE service_project = ?1 AND hash LIKE ?2",
                )?;
                stmt.query_map(params![project, pattern], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?
            };
            if ids.len() == 1 {
                tx.execute(
                    "DELETE FROM api_tokens WHERE service_project = ?1 AND hash LIKE ?2",
                    params![project, pattern],
                )?;
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    // --- the audit trail ---

    pub fn record_event(
        &self,
        user: Option<&str>,
        project: Option<&str>,
        action: &str,
        object: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        let user = user.map(str::to_owned);
        let project = project.map(str::to_owned);
        let action = action.to_owned();
        let object = object.map(str::to_owned);
        let detail = detail.map(str::to_owned);
        self.write(move |conn| {
            let user = user.as_deref();
            let project = project.as_deref();
            let action = action.as_str();
            let object = object.as_deref();
            let detail = detail.as_deref();
            let mut stmt = conn.prepare_cached(
                "INSERT INTO events (ms, user, project, action, object, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            stmt.execute(params![now_ms(), user, project, action, object, detail])?;
            Ok(())
        })
    }

    /// Events since `since_ms` (of one project, or all), the newest `limit` of them, oldest first.
    /// The newest `limit` events at or after `since_ms` (and before the event `before`, to page
    /// back), oldest first.
    /// The newest `limit` events (of a project, of one object of it: a run's), oldest first.
    pub fn events(
        &self,
        project: Option<&str>,
        object: Option<&str>,
        since_ms: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<api::Event>> {
        let conn = self.read();
        // One object's events by their index (an `?5 IS NULL OR` would be no index range).
        let mut stmt = conn.prepare_cached(if object.is_some() {
            "SELECT id, ms, user, project, action, object, detail FROM events INDEXED BY events_by_object \
             WHERE object = ?5 AND (?2 IS NULL OR project = ?2) AND ms >= ?1 AND (?4 IS NULL OR id < ?4) \
             ORDER BY id DESC LIMIT ?3"
        } else {
            "SELECT id, ms, user, project, action, object, detail FROM events \
             WHERE ms >= ?1 AND (?2 IS NULL OR project = ?2) AND (?4 IS NULL OR id < ?4) AND ?5 IS NULL \
             ORDER BY id DESC LIMIT ?3"
        })?;
        let rows = stmt.query_map(params![since_ms, project, limit, before, object], |r| {
            Ok(api::Event {
                id: r.get(0)?,
                ms: r.get(1)?,
                user: r.get(2)?,
                project: r.get(3)?,
                action: r.get(4)?,
                object: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        let mut events = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// Forgets events older than `before_ms`; answers how many.
    pub fn prune_events(&self, before_ms: i64) -> Result<usize> {
        self.execute("DELETE FROM events WHERE ms < ?1", owned![before_ms])
    }
}
