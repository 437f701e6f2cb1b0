//! Authorization in one place. Every route is added with the rule that says who may call it
//! ([`Rule`]); one middleware ([`authorize`]) finds the route's rule by its path pattern and
//! method, checks the caller's token and rights before any handler runs, and records in the audit
//! trail what a caller changed. A route cannot be added without a rule, and a request that matches
//! no rule is refused (`500`, fail closed). Services with `auth: true` check their callers in
//! [`super::proxy`] with the same roles ([`may_call_service`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State as Extract};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};

use corral_proto::api::{GlobalRole, ProjectRole};

use super::{AppState, Error, bearer_token, err};
use crate::State;
use crate::secrets::sha256_hex;
use crate::store::Caller;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, without a token: health, installing hosts (their join token is checked by the
    /// handler), services' proxies (each service's `auth` decides).
    Open,
    /// Any valid token, a service token too.
    Token,
    /// Any user (not a service token).
    User,
    /// A global admin.
    Admin,
    /// The user the path names (`{user}`), or a global admin.
    SelfOrAdmin,
    /// A member of the path's `{project}` with this role or a higher one, or a global admin.
    Project(ProjectRole),
}

/// The HTTP methods routes are added with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    /// Every method (the services' proxy).
    Any,
}

impl Method {
    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Delete => MethodFilter::DELETE,
            Self::Any => MethodFilter::GET
                .or(MethodFilter::POST)
                .or(MethodFilter::PUT)
                .or(MethodFilter::DELETE)
                .or(MethodFilter::PATCH)
                .or(MethodFilter::HEAD)
                .or(MethodFilter::OPTIONS),
        }
    }

    fn of(method: &axum::http::Method) -> Option<Self> {
        Some(match *method {
            axum::http::Method::GET | axum::http::Method::HEAD => Self::Get,
            axum::http::Method::POST => Self::Post,
            axum::http::Method::PUT => Self::Put,
            axum::http::Method::DELETE => Self::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Any => "ANY",
        }
    }
}

/// One route: its method, path pattern, rule, and what it does (the audit trail's action, and
/// what a refusal names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub rule: Rule,
    pub action: &'static str,
}

impl Route {
    /// Changes are recorded, and so are ways into a run's container.
    fn audited(&self) -> bool {
        match self.method {
            Method::Get => matches!(self.action, "run.exec" | "run.ssh" | "run.tunnel"),
            Method::Any => false,
            _ => self.action != "upload.check",
        }
    }
}

/// Routes with their rules, as they are added.
pub struct Routes {
    router: Router<AppState>,
    table: Vec<Route>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    pub fn new() -> Self {
        Self { router: Router::new(), table: Vec::new() }
    }

    pub fn route<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        rule: Rule,
        action: &'static str,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, on(method.filter(), handler));
        self.table.push(Route { method, path, rule, action });
        self
    }

    /// The router, every route behind [`authorize`], and its table.
    pub fn finish(self, state: &AppState) -> (Router<AppState>, Vec<Route>) {
        let table = Arc::new(Table::new(&self.table));
        let router =
            self.router.route_layer(middleware::from_fn_with_state(Authz { state: state.clone(), table }, authorize));
        (router, self.table)
    }
}

struct Table {
    by_path: HashMap<&'static str, Vec<Route>>,
}

impl Table {
    fn new(routes: &[Route]) -> Self {
        let mut by_path: HashMap<&'static str, Vec<Route>> = HashMap::new();
        for r in routes {
            by_path.entry(r.path).or_default().push(r.clone());
        }
        Self { by_path }
    }

    fn find(&self, path: &str, method: &axum::http::Method) -> Option<&Route> {
        let routes = self.by_path.get(path)?;
        let method = Method::of(method);
        routes.iter().find(|r| Some(r.method) == method).or_else(|| routes.iter().find(|r| r.method == Method::Any))
    }
}

#[derive(Clone)]
struct Authz {
    state: AppState,
    table: Arc<Table>,
}

/// What a handler adds to the audit trail's entry of its request (never a secret's value): the
/// object when the path does not name it (a run applied, a user made), and a detail.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    pub object: Option<String>,
    pub project: Option<String>,
    pub detail: Option<String>,
}

/// A JSON answer whose audit entry names `object`.
pub fn naming<T: serde::Serialize>(body: T, object: &str) -> Response {
    with_audit(body, Audit { object: Some(object.to_owned()), ..Audit::default() })
}

pub fn with_audit<T: serde::Serialize>(body: T, audit: Audit) -> Response {
    let mut r = axum::Json(body).into_response();
    r.extensions_mut().insert(audit);
    r
}

async fn authorize(Extract(authz): Extract<Authz>, req: Request, next: Next) -> Response {
    let Some(pattern) = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "no route matched").into_response();
    };
    let Some(route) = authz.table.find(&pattern, req.method()).cloned() else {
        if let Some(routes) = authz.table.by_path.get(pattern.as_str()) {
            let allowed: Vec<&str> = routes.iter().map(|r| r.method.as_str()).collect();
            let said = format!("{} is not allowed on {pattern}: use {}", req.method(), allowed.join(" or "));
            return err(StatusCode::METHOD_NOT_ALLOWED, said).into_response();
        }
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no authorization rule for {} {pattern}: refused", req.method()),
        )
        .into_response();
    };
    if route.rule == Rule::Open {
        return next.run(req).await;
    }
    let state = &authz.state;
    let caller = match caller(state, req.headers()) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let params: Vec<(String, String)> = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        Err(RawPathParamsRejection::MissingPathParams(_)) => Vec::new(),
        Err(e) => return e.into_response(),
    };
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let project = param("project");
    let role_in = |p: &str, user: &str| state.store.member_role(p, user);
    if let Err(e) = decide(&caller, &route, project, param("user"), role_in) {
        return e.into_response();
    }
    parts.extensions.insert(caller.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    let done = response.status().is_success() || response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if route.audited() && done {
        let audit = response.extensions().get::<Audit>();
        let object = audit
            .and_then(|a| a.object.as_deref())
            .or_else(|| ["name", "user", "id", "sha256"].into_iter().find_map(param));
        let project = audit.and_then(|a| a.project.as_deref()).or(project);
        let detail = audit.and_then(|a| a.detail.as_deref());
        let user = caller.label();
        if let Err(e) = state.store.record_event(Some(&user), project, route.action, object, detail) {
            // The change is made and answered; only its record is missing, and the log says so.
            tracing::error!(action = route.action, user, "cannot record the event: {e:#}");
        }
    }
    response
}

/// Who the request's bearer token is, or why it is refused (`401`).
pub(crate) fn caller(state: &State, headers: &axum::http::HeaderMap) -> Result<Caller, Error> {
    let Some(token) = bearer_token(headers) else {
        return Err(err(StatusCode::UNAUTHORIZED, "missing bearer token: set CORRAL_TOKEN or run `corral config`"));
    };
    state.store.caller(&sha256_hex(token.as_bytes()))?.ok_or_else(|| {
        err(StatusCode::UNAUTHORIZED, "invalid token: it is not a Corral token, or it was rotated or its user deleted")
    })
}

/// Whether `caller` may call `route` (`project` and `user`: the path's parameters), or the `403`
/// saying which right is missing. `role_in(project, user)` is the user's role in a project.
pub(crate) fn decide(
    caller: &Caller,
    route: &Route,
    project: Option<&str>,
    user_param: Option<&str>,
    role_in: impl Fn(&str, &str) -> Result<Option<ProjectRole>, crate::store::StoreError>,
) -> Result<(), Error> {
    let action = route.action;
    let (name, global) = match caller {
        Caller::Service { project, run } => {
            return match route.rule {
                Rule::Token | Rule::Open => Ok(()),
                _ => Err(err(
                    StatusCode::FORBIDDEN,
                    format!("{action}: this token only calls the service {project}/{run}, nothing else"),
                )),
            };
        }
        Caller::User { name, role } => (name.as_str(), *role),
    };
    if global == GlobalRole::Admin {
        return Ok(());
    }
    let needs_admin = || {
        err(
            StatusCode::FORBIDDEN,
            format!(
                "{action} needs a global admin; {name} is a user (`corral user create NAME --role admin` makes one)"
            ),
        )
    };
    match route.rule {
        Rule::Open | Rule::Token | Rule::User => Ok(()),
        Rule::Admin => Err(needs_admin()),
        Rule::SelfOrAdmin if user_param == Some(name) => Ok(()),
        Rule::SelfOrAdmin => Err(err(
            StatusCode::FORBIDDEN,
            format!("{action} for another user needs a global admin; {name} may do it only for itself"),
        )),
        Rule::Project(needed) => {
            let Some(project) = project else {
                return Err(err(StatusCode::INTERNAL_SERVER_ERROR, format!("{action}: the route names no project")));
            };
            match role_in(project, name)? {
                Some(role) if role >= needed => Ok(()),
                Some(role) => Err(err(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{action} in project {project} needs the {} role; {name} is a {}: a manager or admin of the project can change it (`corral project member add {project} {name} --role {}`)",
                        needed.as_str(),
                        role.as_str(),
                        needed.as_str()
                    ),
                )),
                None => Err(err(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{action}: {name} is not a member of project {project}: a manager of the project can add it (`corral project member add {project} {name} --role {}`)",
                        needed.as_str()
                    ),
                )),
            }
        }
    }
}

/// Whether the request may call the service `project/run` (one with `auth: true`; `run`: `None`
/// for the project's model route, checked again per service by the caller): members of the
/// project in any role, global admins, and the service's own tokens. `Err` is the answer.
pub(crate) fn may_call_service(
    state: &State,
    headers: &axum::http::HeaderMap,
    project: &str,
    run: Option<&str>,
) -> Result<Caller, Error> {
    let caller = caller(state, headers)?;
    let allowed = match &caller {
        Caller::User { role: GlobalRole::Admin, .. } => true,
        Caller::User { name, .. } => state.store.member_role(project, name)?.is_some(),
        Caller::Service { project: p, run: r } => p == project && run.is_none_or(|run| run == r),
    };
    if allowed {
        Ok(caller)
    } else {
        let what = run.map_or_else(|| format!("the models of project {project}"), |r| format!("service {project}/{r}"));
        Err(err(
            StatusCode::FORBIDDEN,
            format!(
                "{what}: this token is not a member of project {project}, nor a token made for this service (`corral token create --service RUN`)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rule: Rule) -> Route {
        Route { method: Method::Post, path: "/api/projects/{project}/x", rule, action: "x.do" }
    }

    fn user(name: &str) -> Caller {
        Caller::User { name: name.into(), role: GlobalRole::User }
    }

    /// alice is a user of `alpha`, bob its manager.
    fn roles(project: &str, user: &str) -> Result<Option<ProjectRole>, crate::store::StoreError> {
        Ok(match (project, user) {
            ("alpha", "alice") => Some(ProjectRole::User),
            ("alpha", "bob") => Some(ProjectRole::Manager),
            _ => None,
        })
    }

    fn status(caller: &Caller, rule: Rule, project: Option<&str>, user_param: Option<&str>) -> Option<String> {
        decide(caller, &route(rule), project, user_param, roles).err().map(|e| e.message().to_owned())
    }

    #[test]
    fn roles_order_and_refusals_say_what_is_missing() {
        assert_eq!(status(&user("alice"), Rule::Project(ProjectRole::User), Some("alpha"), None), None);
        let said = status(&user("alice"), Rule::Project(ProjectRole::Manager), Some("alpha"), None).expect("refused");
        assert!(said.contains("needs the manager role; alice is a user"), "{said}");
        assert_eq!(status(&user("bob"), Rule::Project(ProjectRole::Manager), Some("alpha"), None), None);
        let said = status(&user("bob"), Rule::Project(ProjectRole::Admin), Some("alpha"), None).expect("refused");
        assert!(said.contains("needs the admin role; bob is a manager"), "{said}");
        let said = status(&user("bob"), Rule::Project(ProjectRole::User), Some("beta"), None).expect("refused");
        assert!(said.contains("bob is not a member of project beta"), "{said}");
        let admin = Caller::User { name: "root".into(), role: GlobalRole::Admin };
        for rule in [Rule::Admin, Rule::SelfOrAdmin, Rule::Project(ProjectRole::Admin)] {
            assert_eq!(status(&admin, rule, Some("beta"), Some("x")), None);
        }
        assert!(status(&user("alice"), Rule::Admin, None, None).expect("refused").contains("needs a global admin"));
        assert_eq!(status(&user("alice"), Rule::SelfOrAdmin, None, Some("alice")), None);
        assert!(status(&user("alice"), Rule::SelfOrAdmin, None, Some("bob")).is_some());
    }

    #[test]
    fn a_service_token_calls_nothing_but_its_service() {
        let service = Caller::Service { project: "alpha".into(), run: "llm".into() };
        assert_eq!(status(&service, Rule::Token, None, None), None);
        for rule in [Rule::User, Rule::Admin, Rule::Project(ProjectRole::User)] {
            let said = status(&service, rule, Some("alpha"), None).expect("refused");
            assert!(said.contains("only calls the service alpha/llm"), "{said}");
        }
    }
}
