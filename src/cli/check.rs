pub fn main(_args: &[String]) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
