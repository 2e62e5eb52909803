//! The README's example: sign in, create, update with `If-Match`, search every page.

use futures_util::TryStreamExt;
use kiln_client::KilnClient;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), kiln_client::Error> {
    // cargo run -p kiln-client --example quickstart -- http://127.0.0.1:8103/ EMAIL PASSWORD
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, email, password] = args.as_slice() else {
        panic!("usage: quickstart URL EMAIL PASSWORD");
    };
    let client = KilnClient::new(url)?;
    client.login(email, password).await?;

    let patient = client
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]}))
        .await?;
    let id = patient["id"].as_str().unwrap();
    let version = patient["meta"]["versionId"].as_str().unwrap();

    // Optimistic locking: a stale version is a 412 carrying an OperationOutcome.
    let mut changed = patient.clone();
    changed["gender"] = json!("female");
    match client.update_if_match(&changed, version).await {
        Ok(updated) => println!("now version {}", updated["meta"]["versionId"]),
        Err(e) if e.is_precondition_failed() => {
            println!("someone else changed it: {:?}", e.outcome())
        }
        Err(e) => return Err(e),
    }

    // Every page of a search, as one stream.
    let everyone: Vec<_> = client
        .search("Patient", &[("family", "Chalmers"), ("_count", "100")])
        .try_collect()
        .await?;
    println!("{} patients, {id} among them", everyone.len());
    Ok(())
}
