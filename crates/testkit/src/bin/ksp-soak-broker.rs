//! The chaos soak's embedded Kafka cluster in a process of its own, for a soak run in the
//! parent (`ksp_testkit::soak::BrokerPlacement::Process`): prints `bootstrap <address>`, then
//! applies the faults it is sent on standard input until that closes.

fn main() -> ksp_testkit::TestkitResult<()> {
    ksp_testkit::soak::serve_broker()
}
