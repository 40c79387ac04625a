//! product-service: the healthy dependency. `GET /products`, `GET /products/{id}`.

use actix_web::{web, HttpResponse};
use clap::Parser;
use service_runtime::{resource, ApiError, ServeArgs, Service};

#[derive(Debug, Parser)]
#[command(
    name = "product-service",
    version,
    about = "Serves the demo's product catalogue"
)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

async fn list() -> HttpResponse {
    HttpResponse::Ok().json(catalog::products())
}

async fn get_one(id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = catalog::parse_id(&id).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let product = catalog::product(id)
        .ok_or_else(|| ApiError::not_found(format!("product {id} not found")))?;
    Ok(HttpResponse::Ok().json(product))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    service_runtime::init_logging(args.serve.log_format);
    Service::new("product-service")
        .run(&args.serve, 8081, |cfg| {
            cfg.service(resource("/products").get(list))
                .service(resource("/products/{id}").get(get_one));
        })
        .await
}
