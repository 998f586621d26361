//! `admin`: the admin API's address and token file.

use super::*;

impl Validator {
    pub(super) fn admin(
        &mut self,
        raw: Option<Part<RawAdmin>>,
        listeners: &[(usize, Listener)],
    ) -> Option<Admin> {
        let raw = match raw {
            Some(Ok(admin)) => Some(admin),
            Some(Err(_)) => return None,
            None => None,
        };
        let (address, token_file) = match raw {
            Some(admin) => (admin.address, admin.token_file),
            None => (None, None),
        };
        let token_file = token_file.and_then(|file| {
            self.path_field(
                "admin.token_file",
                &file,
                "name the file holding the admin token, or remove token_file",
            )
        });
        let explicit = address.is_some();
        let address = match address {
            None => DEFAULT_ADMIN_ADDRESS,
            Some(text) => match parse_listen_address(&text.to_string()) {
                Ok(address) => address,
                Err(reason) => {
                    self.err("admin.address", reason);
                    return None;
                }
            },
        };
        if !address.ip().is_loopback() && token_file.is_none() {
            self.err(
                "admin.address",
                format!(
                    "`{address}` is not a loopback address: set admin.token_file: the admin API must not be open without a token"
                ),
            );
        }
        for (i, listener) in listeners {
            if overlaps(address, listener.address) {
                if explicit {
                    self.err(
                        "admin.address",
                        format!(
                            "`{address}` overlaps listeners[{i}] (`{}`): the admin API needs a port of its own",
                            listener.address
                        ),
                    );
                } else {
                    self.err(
                        format!("listeners[{i}].address"),
                        format!(
                            "`{}` overlaps the admin API's default address {DEFAULT_ADMIN_ADDRESS}: change this port or set admin.address",
                            listener.address
                        ),
                    );
                }
            }
        }
        Some(Admin {
            address,
            token_file,
        })
    }
}
