//! Checks of consumers' `grants`: a granted folder must exist, an endpoint
//! must read `host:port`, and a granted environment variable that is not set
//! is worth a warning, because the handler would run without it.

use super::{Manifest, Problem};
use crate::handler::Endpoint;

pub(super) fn check(
    manifest: &Manifest,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    for (name, entry) in &manifest.consumers {
        let grants = &entry.def.grants;
        for variable in &grants.env {
            if lookup(variable.get_ref()).is_none() {
                problems.push(
                    Problem::warning(
                        "granted-variable-unset",
                        format!(
                            "consumer `{name}` is granted environment variable `{}`, which is not set",
                            variable.get_ref()
                        ),
                    )
                    .at(entry.file, variable.span())
                    .hint("set it where switchyard runs; the handler does not see it otherwise"),
                );
            }
        }
        let folder = manifest.files[entry.file].folder();
        for (guest, host) in &grants.read_dirs {
            let path = folder.join(host.get_ref());
            if !path.is_dir() {
                problems.push(
                    Problem::error(
                        "granted-folder-not-found",
                        format!(
                            "consumer `{name}` is granted folder `{}` as `{guest}`, but it is not a folder",
                            path.display()
                        ),
                    )
                    .at(entry.file, host.span())
                    .hint("create the folder, or give its path relative to this manifest's folder"),
                );
            }
        }
        for endpoint in &grants.connect {
            if let Err(reason) = endpoint.get_ref().parse::<Endpoint>() {
                problems.push(
                    Problem::error(
                        "granted-endpoint-invalid",
                        format!(
                            "consumer `{name}` is granted endpoint `{}`, which is not `host:port`: {reason}",
                            endpoint.get_ref()
                        ),
                    )
                    .at(entry.file, endpoint.span())
                    .hint("write a host name or IP address and a port, such as `redis:6379` or `[::1]:6379`"),
                );
            }
        }
    }
}
