//! The store's schema, as the steps that made it.

/// Each entry is applied once, in order; `PRAGMA user_version` counts how many have been.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE projects (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE api_tokens (hash TEXT PRIMARY KEY, name TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY, fleet TEXT, created_ms INTEGER NOT NULL,
    expires_ms INTEGER, uses_left INTEGER, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, fleet TEXT, cert_fingerprint TEXT NOT NULL UNIQUE,
    enrolled_ms INTEGER NOT NULL, last_seen_ms INTEGER, address TEXT, agent_version TEXT,
    inventory TEXT, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE runs (
    id TEXT PRIMARY KEY, project TEXT NOT NULL REFERENCES projects(name), name TEXT NOT NULL,
    configuration TEXT NOT NULL, source TEXT, submitted_ms INTEGER NOT NULL);
CREATE INDEX runs_by_name ON runs(project, name);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), job_num INTEGER NOT NULL,
    state TEXT NOT NULL, node_id TEXT, allocation TEXT, spec TEXT, exit_code INTEGER,
    termination_reason TEXT, status_message TEXT, submitted_ms INTEGER NOT NULL,
    started_ms INTEGER, finished_ms INTEGER);
CREATE INDEX jobs_by_state ON jobs(state);
INSERT INTO projects VALUES ('main', 0);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN cordoned INTEGER NOT NULL DEFAULT 0;
CREATE TABLE fleets (
    project TEXT NOT NULL REFERENCES projects(name), name TEXT NOT NULL,
    configuration TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (project, name));
"#,
    r#"
ALTER TABLE jobs ADD COLUMN submission INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN not_before_ms INTEGER;
CREATE INDEX jobs_by_run ON jobs(run_id, job_num, submission);
"#,
    r#"
CREATE INDEX nodes_by_name ON nodes(name);
"#,
    r#"
ALTER TABLE runs ADD COLUMN replicas INTEGER;
CREATE INDEX runs_by_replicas ON runs(replicas) WHERE replicas IS NOT NULL;
CREATE INDEX jobs_by_node ON jobs(node_id, state) WHERE node_id IS NOT NULL;
"#,
    r#"
CREATE TABLE images (name TEXT PRIMARY KEY, config TEXT NOT NULL, layers TEXT NOT NULL,
    size INTEGER NOT NULL, pushed_ms INTEGER NOT NULL);
"#,
    // The coordinator's own join token (the data dir's `join-token`), so that a revoked one stays
    // revoked whatever the file says later.
    r#"
ALTER TABLE join_tokens ADD COLUMN is_default INTEGER NOT NULL DEFAULT 0;
"#,
    // Scheduled runs (`schedule:`): what is submitted, and when next (`NULL` while its run is
    // active).
    r#"
CREATE TABLE schedules (
    project TEXT NOT NULL REFERENCES projects(name), name TEXT NOT NULL, request TEXT NOT NULL,
    created_ms INTEGER NOT NULL, next_ms INTEGER, run_id TEXT, error TEXT, PRIMARY KEY (project, name));
CREATE INDEX schedules_by_next ON schedules(next_ms);
"#,
    // Named volumes (`type: volume`, `volumes: [name:/path]`).
    r#"
CREATE TABLE volumes (
    project TEXT NOT NULL REFERENCES projects(name), name TEXT NOT NULL, configuration TEXT,
    backend TEXT, node_id TEXT, volume_id TEXT, region TEXT, availability_zone TEXT, size INTEGER,
    status TEXT NOT NULL, status_message TEXT, created_ms INTEGER NOT NULL, PRIMARY KEY (project, name));
"#,
    // A service with replica groups: each group's desired replica count (a JSON list; `NULL`: each
    // group's initial count), next to their sum in `replicas`.
    r#"
ALTER TABLE runs ADD COLUMN group_replicas TEXT;
"#,
    // A project's secrets (`corral secret set`), sealed with the data dir's key ([`crate::vault`]).
    r#"
CREATE TABLE secrets (
    project TEXT NOT NULL REFERENCES projects(name), name TEXT NOT NULL, sealed BLOB NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (project, name));
"#,
    // Users (the admin token's holder becomes the global admin `admin`), projects' members with
    // their roles, tokens for calling one service, and the audit trail ([`access`]).
    r#"
CREATE TABLE users (name TEXT PRIMARY KEY, global_role TEXT NOT NULL, created_ms INTEGER NOT NULL);
ALTER TABLE api_tokens ADD COLUMN user TEXT REFERENCES users(name);
ALTER TABLE api_tokens ADD COLUMN service_project TEXT;
ALTER TABLE api_tokens ADD COLUMN service_run TEXT;
ALTER TABLE api_tokens ADD COLUMN created_by TEXT;
CREATE INDEX api_tokens_by_user ON api_tokens(user);
INSERT INTO users (name, global_role, created_ms) SELECT name, 'admin', MIN(created_ms) FROM api_tokens WHERE name = 'admin' GROUP BY name;
UPDATE api_tokens SET user = name WHERE name = 'admin';
CREATE TABLE members (
    project TEXT NOT NULL REFERENCES projects(name), user TEXT NOT NULL REFERENCES users(name),
    role TEXT NOT NULL, PRIMARY KEY (project, user));
CREATE INDEX members_by_user ON members(user);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ms INTEGER NOT NULL, user TEXT, project TEXT,
    action TEXT NOT NULL, object TEXT, detail TEXT);
CREATE INDEX events_by_ms ON events(ms);
"#,
    // Images belong to a project (`corral image push`), or to every project when pushed with
    // `--shared` (`project = ''`): the cluster-wide images of earlier releases stay shared.
    r#"
CREATE TABLE images_by_project (project TEXT NOT NULL, name TEXT NOT NULL, config TEXT NOT NULL,
    layers TEXT NOT NULL, size INTEGER NOT NULL, pushed_ms INTEGER NOT NULL, PRIMARY KEY (project, name));
INSERT INTO images_by_project (project, name, config, layers, size, pushed_ms)
    SELECT '', name, config, layers, size, pushed_ms FROM images;
DROP TABLE images;
ALTER TABLE images_by_project RENAME TO images;
"#,
    // Runs listed a page at a time, newest first (`GET .../runs?limit=&after=`).
    r#"
CREATE INDEX runs_by_time ON runs(project, submitted_ms);
"#,
    // GPUs out of service (a fatal Xid, uncorrectable ECC errors, ...), until returned.
    r#"
CREATE TABLE gpu_marks (
    node_id TEXT NOT NULL, gpu INTEGER NOT NULL, uuid TEXT NOT NULL, reason TEXT NOT NULL,
    since_ms INTEGER NOT NULL, clears INTEGER NOT NULL, PRIMARY KEY (node_id, gpu));
"#,
    // A run's history (`corral ps RUN`): its events by what they were done to.
    r#"
CREATE INDEX events_by_object ON events(object);
"#,
];
