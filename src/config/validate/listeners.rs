//! `listeners`: names, addresses that do not collide, and their TLS.

use super::*;

impl Validator {
    /// The valid listeners, each with its index in the file.
    pub(super) fn listeners(
        &mut self,
        raw: Option<Vec<Part<RawListener>>>,
    ) -> Vec<(usize, Listener)> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                "listeners",
                "no listeners: add at least one, such as `- { name: public, address: 127.0.0.1:8080 }`",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut valid: Vec<(usize, Listener)> = Vec::new();
        for (i, listener) in raw.into_iter().enumerate() {
            let Ok(listener) = listener else { continue };
            let path = format!("listeners[{i}]");
            let name_path = format!("{path}.name");
            let name = self.required(
                &name_path,
                listener.name,
                "missing name: give the listener a name, such as public",
            );
            if let Some(name) = &name {
                if self.name(&name_path, name, "listener") {
                    if let Some(first) = names.get(name) {
                        self.err(
                            &name_path,
                            format!(
                                "duplicate listener name `{name}` (also listeners[{first}]): give each listener its own name"
                            ),
                        );
                    } else {
                        names.insert(name.clone(), i);
                    }
                }
            }
            let address_path = format!("{path}.address");
            let address = self
                .required(
                    &address_path,
                    listener.address,
                    "missing address: give the IP:PORT to listen on, such as 127.0.0.1:8080",
                )
                .and_then(|text| match parse_listen_address(&text.to_string()) {
                    Ok(address) => Some(address),
                    Err(reason) => {
                        self.err(&address_path, reason);
                        None
                    }
                });
            let tls = listener
                .tls
                .map(|tls| self.listener_tls(&format!("{path}.tls"), tls));
            let Some(address) = address else { continue };
            for (j, other) in &valid {
                if overlaps(address, other.address) {
                    self.err(
                        format!("{path}.address"),
                        format!(
                            "`{address}` overlaps listeners[{j}] (`{}`): two listeners cannot bind the same port on the same address; change one of the ports",
                            other.address
                        ),
                    );
                }
            }
            valid.push((
                i,
                Listener {
                    name: name.unwrap_or_default(),
                    address,
                    // An invalid TLS block is reported; the listener is kept
                    // only so that overlaps with it are still found.
                    tls: tls.flatten(),
                },
            ));
        }
        valid
    }
}
