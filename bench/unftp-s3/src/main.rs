//! The S3 peer of `bench/s3.py`: libunftp with unftp-sbe-opendal over one
//! bucket of an S3-compatible endpoint, anonymous logins (any user name and
//! password), plain FTP on loopback.
//!
//!     unftp-s3-peer LISTEN ENDPOINT BUCKET PREFIX PASSIVE_FROM PASSIVE_TO
//!
//! Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.

use std::process::ExitCode;

use unftp_sbe_opendal::OpendalStorage;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, endpoint, bucket, prefix, from, to] = args.as_slice() else {
        eprintln!("usage: unftp-s3-peer LISTEN ENDPOINT BUCKET PREFIX PASSIVE_FROM PASSIVE_TO");
        return ExitCode::from(2);
    };
    let (Ok(from), Ok(to)) = (from.parse::<u16>(), to.parse::<u16>()) else {
        eprintln!("unftp-s3-peer: passive ports must be numbers");
        return ExitCode::from(2);
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let builder = opendal::services::S3::default()
        .endpoint(endpoint)
        .bucket(bucket)
        .root(&format!("/{prefix}"))
        .region("us-east-1")
        .access_key_id(&env("AWS_ACCESS_KEY_ID"))
        .secret_access_key(&env("AWS_SECRET_ACCESS_KEY"));
    let op = match opendal::Operator::new(builder) {
        Ok(op) => op,
        Err(e) => {
            eprintln!("unftp-s3-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let storage = OpendalStorage::new(op);
    let server = match libunftp::ServerBuilder::new(Box::new(move || storage.clone()))
        .greeting("unftp-s3-peer ready")
        .passive_ports(from..=to)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("unftp-s3-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("unftp-s3-peer listening on {listen}");
    match server.listen(listen.clone()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unftp-s3-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
