//! What a run's configuration asks of its jobs' containers beyond resources: the image (dstack's
//! base image when the run names none), the shell, the user, the entrypoint, the Python, registry
//! credentials. Pure: the scheduler calls it for every job it places.

use corral_proto::config::TaskConfig;
use corral_proto::job::{ContainerSpec, RegistryCredentials};

/// dstack's default image: what runs with no `image` (with `python`, or neither).
pub const BASE_IMAGE: &str = "dstackai/base:0.15-base-ubuntu24.04";
/// dstack's default image with the CUDA compiler (`nvcc: true`).
pub const BASE_IMAGE_DEVEL: &str = "dstackai/base:0.15-devel-ubuntu24.04";

/// dstack's docker-in-docker image (`docker: true`): it has `dockerd` and `start-dockerd`.
pub const DIND_IMAGE: &str = "dstackai/dind";

/// The images a run with no `image` gets (`--base-image`, `--base-image-devel`, `--dind-image`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImages {
    pub base: String,
    pub devel: String,
    pub dind: String,
}

impl Default for BaseImages {
    fn default() -> Self {
        Self { base: BASE_IMAGE.to_owned(), devel: BASE_IMAGE_DEVEL.to_owned(), dind: DIND_IMAGE.to_owned() }
    }
}

/// The image a job of `task` runs.
pub fn image(task: &TaskConfig, base: &BaseImages) -> String {
    match &task.image {
        Some(image) => image.clone(),
        None if task.docker => base.dind.clone(),
        None if task.nvcc => base.devel.clone(),
        None => base.base.clone(),
    }
}

/// The container fields of a job of `task` that follow from its configuration alone (mounts,
/// uploads and devices are added by their own parts).
pub fn container(task: &TaskConfig) -> ContainerSpec {
    ContainerSpec {
        shell: task.shell.clone(),
        user: task.user.clone(),
        // Docker inside needs it (dstack: `docker` overrides `privileged`).
        privileged: task.privileged || task.docker,
        docker: task.docker,
        // Admission checked that it splits.
        entrypoint: task.entrypoint.as_deref().and_then(shlex::split),
        registry_auth: task
            .registry_auth
            .as_ref()
            .map(|a| RegistryCredentials { username: a.username.clone(), password: a.password.clone() }),
        // The base image has no Python of its own to speak of: without `python`, dstack gives it
        // its default version. With an image of the user's, `python` is not allowed.
        // No venv with an entrypoint or Docker inside, as in dstack.
        python: task.python.clone().or_else(|| {
            (task.image.is_none() && task.entrypoint.is_none() && !task.docker).then(|| DEFAULT_PYTHON.to_owned())
        }),
        // The agent samples the job's GPUs and stops it (see agent/src/jobs/utilization.rs).
        utilization_policy: task.utilization_policy.clone(),
        ..ContainerSpec::default()
    }
}

/// What `dstack: true` gives a job: where the coordinator's API is, as its node reaches it (the
/// `--public-url`, or the address the node's agent connected to with the API's port), the
/// project, and the CA of an HTTPS API (PEM, which `corral` reads from `CORRAL_CA_CERT`). No
/// token: a run that calls the API brings its own (`env: [CORRAL_TOKEN]`), as in dstack.
pub fn server_env(state: &crate::State, node: &corral_proto::ids::NodeId, project: &str) -> Vec<(String, String)> {
    let https = state.https;
    let url = state.config.public_url.clone().unwrap_or_else(|| {
        let listen = state.config.http_listen.ip();
        let ip = if listen.is_unspecified() {
            state.sessions.get(node).and_then(|s| s.conn.local_ip()).unwrap_or(listen)
        } else {
            listen
        };
        let port = state.http_port.get().copied().unwrap_or(state.config.http_listen.port());
        let host = std::net::SocketAddr::new(ip, port);
        format!("{}://{host}", if https { "https" } else { "http" })
    });
    let mut env = vec![
        ("CORRAL_URL".to_owned(), url.clone()),
        ("CORRAL_PROJECT".to_owned(), project.to_owned()),
        ("DSTACK_SERVER_URL".to_owned(), url),
        ("DSTACK_PROJECT".to_owned(), project.to_owned()),
    ];
    if https && matches!(state.config.http_tls, crate::HttpTls::Own(_)) {
        env.push(("CORRAL_CA_CERT".to_owned(), state.pki.ca_pem().to_owned()));
    }
    env
}

/// The Python a run in the base image gets when it names none (dstack's default).
pub const DEFAULT_PYTHON: &str = "3.12";

#[cfg(test)]
mod tests {
    use super::*;

    fn task(text: &str) -> TaskConfig {
        match corral_proto::config::parse(text, "t.yml").expect("valid") {
            corral_proto::config::Configuration::Task(t) => t,
            other => panic!("not a task: {other:?}"),
        }
    }

    #[test]
    fn runs_without_an_image_get_the_base_image() {
        let base = BaseImages::default();
        assert_eq!(image(&task("type: task\ncommands: [x]\n"), &base), BASE_IMAGE);
        assert_eq!(image(&task("type: task\npython: 3.11\nnvcc: true\ncommands: [x]\n"), &base), BASE_IMAGE_DEVEL);
        assert_eq!(image(&task("type: task\nimage: alpine\ncommands: [x]\n"), &base), "alpine");
        let mirror = BaseImages {
            base: "registry.local/base:1".into(),
            devel: "registry.local/devel:1".into(),
            dind: "registry.local/dind".into(),
        };
        assert_eq!(image(&task("type: task\ncommands: [x]\n"), &mirror), "registry.local/base:1");
        let dind = task("type: task\ndocker: true\ncommands: [docker ps]\n");
        assert_eq!(image(&dind, &base), DIND_IMAGE);
        let c = container(&dind);
        assert!(c.docker && c.privileged && c.python.is_none(), "{c:?}");
    }

    #[test]
    fn python_defaults_only_in_the_base_image() {
        assert_eq!(container(&task("type: task\ncommands: [x]\n")).python.as_deref(), Some(DEFAULT_PYTHON));
        assert_eq!(container(&task("type: task\npython: \"3.10\"\ncommands: [x]\n")).python.as_deref(), Some("3.10"));
        assert_eq!(container(&task("type: task\nimage: alpine\ncommands: [x]\n")).python, None);
    }

    #[test]
    fn the_entrypoint_is_split_as_a_shell_would() {
        let c = container(&task("type: task\nimage: alpine\nentrypoint: python3 -c 'print(1)'\n"));
        assert_eq!(c.entrypoint, Some(vec!["python3".to_owned(), "-c".to_owned(), "print(1)".to_owned()]));
    }

    #[test]
    fn registry_passwords_are_not_in_debug_output() {
        let c = container(&task(
            "type: task\nimage: r.example/a\nregistry_auth: {username: u, password: hunter2}\ncommands: [x]\n",
        ));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.registry_auth.map(|a| a.password), Some("hunter2".to_owned()));
    }

    #[test]
    fn the_utilization_policy_goes_to_the_agent() {
        let c = container(&task(
            "type: task\nimage: a\ncommands: [x]\nutilization_policy: {min_gpu_utilization: 10, time_window: 1h}\n",
        ));
        let p = c.utilization_policy.clone().expect("sent");
        assert_eq!((p.min_gpu_utilization, p.time_window_secs), (10, 3600));
        assert!(c.needs_protocol_2(), "a protocol 1 agent could not enforce it");
        assert_eq!(container(&task("type: task\nimage: a\ncommands: [x]\n")).utilization_policy, None);
    }
}
