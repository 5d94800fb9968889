//! `convsweep`: parses the command line, sets up tracing once and hands over to the library
//! ([`convsweep::run`]), where everything testable lives.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = convsweep::Cli::parse();
    convsweep::prepare_process(&cli.globals);
    let log = convsweep::Logging::init(cli.globals.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(convsweep::run(cli, &log)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", convsweep::flags::explain(&e));
            ExitCode::FAILURE
        }
    }
}
