//! The services apart (`SERVICE=order|payment|store`): each its own application on the same
//! database, broker and Redis, talking only through events, as separate processes would.
//! What each serves, that an order placed at an order instance is paid by a payment instance,
//! that two payment instances in one consumer group charge each order once, and that a
//! product renamed through one store instance is read renamed through another.

mod common;

use std::time::Duration;

use commerce_client::{ApiClient, CreateProduct, OrderStatus, PlaceOrder, RenameProduct};
use commerce_testkit::{eventually, kafka_brokers, redis_url, unique_name, TestDb};
use common::gateway::ScriptedGateway;
use common::SECRET;
use reference_app::auth::{Auth, Role};
use reference_app::config::{Config, PaymentGateway, Secret, SecretUrl, Service};
use reference_app::{Application, RunningApp};
use reqwest::StatusCode;
use uuid::Uuid;

/// One deployment: a database, an event prefix, the broker, Redis and a scripted gateway.
struct Deployment {
    db: TestDb,
    prefix: String,
    gateway: ScriptedGateway,
    auth: Auth,
}

/// One instance of a service.
struct Instance {
    url: String,
    running: RunningApp,
}

impl Deployment {
    async fn new() -> Self {
        Self {
            db: TestDb::with_pool_size(&[], 2).await,
            prefix: unique_name("apart"),
            gateway: ScriptedGateway::start().await,
            auth: Auth::new(&Secret::new(SECRET)).unwrap(),
        }
    }

    fn config(&self, service: Service) -> Config {
        let mut config = Config::local(self.db.url(), SECRET);
        config.service = service;
        config.events.prefix.clone_from(&self.prefix);
        config.events.kafka_brokers = Some(kafka_brokers());
        config.redis_url = Some(SecretUrl::new(redis_url()));
        config.payment.gateway = Some(PaymentGateway::Url(SecretUrl::new(
            self.gateway.url().to_owned(),
        )));
        config.orders.rate_per_minute = None;
        config
    }

    async fn start(&self, service: Service) -> Instance {
        let app = Application::build(self.config(service))
            .await
            .unwrap_or_else(|e| panic!("start {service}: {e:#}"));
        Instance {
            url: app.base_url(),
            running: app.spawn(),
        }
    }

    fn client(&self, instance: &Instance, user: &str, role: Role) -> ApiClient {
        let token = self
            .auth
            .issue(user, role, Duration::from_secs(3600))
            .unwrap();
        ApiClient::builder(&instance.url)
            .bearer_token(&token)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }
}

impl Instance {
    /// The status `GET path` answers, with an admin's token.
    async fn status_of(&self, deployment: &Deployment, path: &str) -> StatusCode {
        let token = deployment
            .auth
            .issue("admin", Role::Admin, Duration::from_secs(60))
            .unwrap();
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn stop(self) {
        commerce_testkit::within(Duration::from_secs(60), self.running.stop())
            .await
            .expect("clean stop");
    }
}

async fn product(store: &ApiClient, sku: &str, stock: i64) -> i64 {
    store
        .create_product(&CreateProduct {
            sku: sku.to_owned(),
            name: format!("product {sku}"),
            price: 1_500,
            initial_stock: stock,
        })
        .await
        .expect("product created")
        .id
}

/// Waits until every order is PROCESSING, read at `orders`.
async fn all_processing(orders: &ApiClient, ids: &[Uuid], within: Duration) {
    let done = eventually(within, || async {
        for id in ids {
            if orders.order(*id).await.expect("order read").status != OrderStatus::Processing {
                return false;
            }
        }
        true
    })
    .await;
    assert!(done, "not every order PROCESSING within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_serves_its_own_routes_and_an_order_is_paid_across_them() {
    let deployment = Deployment::new().await;
    let store = deployment.start(Service::Store).await;
    let order = deployment.start(Service::Order).await;
    let payment = deployment.start(Service::Payment).await;

    let admin = deployment.client(&store, "admin", Role::Admin);
    let product = product(&admin, "APART-1", 10).await;
    // Each answers for its own routes only (and every one for the probes and /metrics).
    let product_path = format!("/api/v1/products/{product}");
    assert_eq!(
        store.status_of(&deployment, &product_path).await,
        StatusCode::OK
    );
    for elsewhere in [&order, &payment] {
        assert_eq!(
            elsewhere.status_of(&deployment, &product_path).await,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        order.status_of(&deployment, "/api/v1/orders").await,
        StatusCode::OK
    );
    for elsewhere in [&store, &payment] {
        assert_eq!(
            elsewhere.status_of(&deployment, "/api/v1/orders").await,
            StatusCode::NOT_FOUND
        );
    }
    for instance in [&store, &order, &payment] {
        for path in ["/health", "/ready", "/metrics"] {
            assert_eq!(
                instance.status_of(&deployment, path).await,
                StatusCode::OK,
                "{path}"
            );
        }
    }

    let customer = deployment.client(&order, "ada", Role::Customer);
    let placed = customer
        .place_order(&PlaceOrder::one(product, 2))
        .await
        .expect("placed at the order instance");
    // The payment instance charges it; the order instance moves it on.
    all_processing(&customer, &[placed.order.id], Duration::from_secs(30)).await;
    assert_eq!(deployment.gateway.charges_of(placed.order.id).len(), 1);
    assert!(deployment.gateway.money_kept(placed.order.id));
    let audit = deployment
        .client(&order, "admin", Role::Admin)
        .audit()
        .await
        .unwrap();
    assert!(audit.consistent, "{audit:?}");

    for instance in [payment, order, store] {
        instance.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_payment_instances_charge_every_order_once_even_when_one_stops() {
    const ORDERS: usize = 60;
    let deployment = Deployment::new().await;
    let store = deployment.start(Service::Store).await;
    let order = deployment.start(Service::Order).await;
    let first = deployment.start(Service::Payment).await;
    let second = deployment.start(Service::Payment).await;

    let admin = deployment.client(&store, "admin", Role::Admin);
    let product = product(&admin, "APART-2", 1_000).await;
    let place = |n: usize| {
        let customer = deployment.client(&order, &format!("c-{n}"), Role::Customer);
        async move {
            customer
                .place_order(&PlaceOrder::one(product, 1))
                .await
                .expect("placed")
                .order
                .id
        }
    };
    let mut ids = Vec::new();
    for n in 0..ORDERS / 2 {
        ids.push(place(n).await);
    }
    // One payment instance goes away mid-run: the other takes its share.
    first.stop().await;
    for n in ORDERS / 2..ORDERS {
        ids.push(place(n).await);
    }
    let reader = deployment.client(&order, "admin", Role::Admin);
    all_processing(&reader, &ids, Duration::from_secs(60)).await;
    for id in &ids {
        let charges = deployment.gateway.charges_of(*id).len();
        assert_eq!(charges, 1, "order {id} charged {charges} times");
    }
    let audit = reader.audit().await.unwrap();
    assert!(audit.consistent, "{audit:?}");
    for instance in [second, order, store] {
        instance.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_renamed_through_one_store_instance_is_read_renamed_through_another() {
    let deployment = Deployment::new().await;
    let one = deployment.start(Service::Store).await;
    let other = deployment.start(Service::Store).await;
    let (at_one, at_other) = (
        deployment.client(&one, "admin", Role::Admin),
        deployment.client(&other, "admin", Role::Admin),
    );
    let id = product(&at_one, "APART-3", 5).await;
    // Read, and so cached, at the other instance first.
    assert_eq!(at_other.product(id).await.unwrap().name, "product APART-3");
    let renamed = at_one
        .rename_product(
            id,
            &RenameProduct {
                name: "Kettle, 1.7 l".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "Kettle, 1.7 l");
    let seen = eventually(Duration::from_secs(1), || async {
        at_other.product(id).await.unwrap().name == "Kettle, 1.7 l"
    })
    .await;
    assert!(
        seen,
        "the other store instance still served the old name 1 s after the rename"
    );
    one.stop().await;
    other.stop().await;
}

/// Two deployments on one Redis server (each its own database and `EVENT_PREFIX`) never serve
/// each other's cached products: the same product id names a different product in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_sharing_a_redis_server_never_read_each_others_products() {
    let (first, second) = (Deployment::new().await, Deployment::new().await);
    let (store_a, store_b) = (
        first.start(Service::Store).await,
        second.start(Service::Store).await,
    );
    let (at_a, at_b) = (
        first.client(&store_a, "admin", Role::Admin),
        second.client(&store_b, "admin", Role::Admin),
    );
    let id_a = product(&at_a, "SHARED-A", 1).await;
    let id_b = product(&at_b, "SHARED-B", 1).await;
    assert_eq!(
        id_a, id_b,
        "both databases number their first product alike"
    );
    // Read, and so cached, in the first deployment; then read in the second.
    assert_eq!(at_a.product(id_a).await.unwrap().name, "product SHARED-A");
    assert_eq!(at_b.product(id_b).await.unwrap().name, "product SHARED-B");
    store_a.stop().await;
    store_b.stop().await;
}
