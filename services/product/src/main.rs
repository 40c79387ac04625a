//! product-service: the healthy dependency. `GET /products`, `GET /products/{id}`. It takes
//! the same fault settings as recommendations-service (env only), so the fault matrix can
//! break the dependency a page cannot do without.

use actix_web::{web, HttpResponse};
use clap::Parser;
use fault::{Fault, FaultArgs};
use service_runtime::{resource, ApiError, ServeArgs, Service};

// mimalloc, as in every binary of this project (why: services/gateway/src/bin/api-gateway-v2.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "product-service",
    version,
    about = "Serves the demo's product catalogue"
)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    fault: FaultArgs,
}

async fn list() -> HttpResponse {
    HttpResponse::Ok().json(catalog::products())
}

async fn get_one(fault: web::Data<Fault>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = catalog::parse_id(&id).map_err(|err| ApiError::bad_request(err.to_string()))?;
    fault
        .apply(|| {
            catalog::product(id)
                .ok_or_else(|| ApiError::not_found(format!("product {id} not found")))
        })
        .await
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    service_runtime::init_logging(args.serve.log_format);
    let fault = args.fault.initial_or_exit("product-service");
    if fault.mode != fault::FaultMode::None {
        tracing::warn!(mode = ?fault.mode, "fault injection is on");
    }
    Service::new("product-service")
        .run(&args.serve, 8081, move |cfg| {
            cfg.app_data(web::Data::new(fault))
                .service(resource("/products").get(list))
                .service(resource("/products/{id}").get(get_one));
        })
        .await
}
