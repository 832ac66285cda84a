/// Defines a scenario once and runs it on each backend, as
/// `<name>::sqlite`, `<name>::postgres` and `<name>::mariadb`.
macro_rules! both {
    ($name:ident, |$p:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::util::{Backend, Project};

            #[test]
            fn sqlite() {
                let $p = Project::new(Backend::Sqlite).unwrap();
                $body
            }

            #[test]
            fn postgres() {
                let Some($p) = Project::new(Backend::Postgres) else {
                    return;
                };
                $body
            }

            #[test]
            fn mariadb() {
                let Some($p) = Project::new(Backend::Mariadb) else {
                    return;
                };
                $body
            }
        }
    };
}
