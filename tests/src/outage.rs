//! A broker outage that affects one test only: a loopback TCP forwarder in
//! front of RabbitMQ that the test can cut and restore. Cutting it closes
//! every forwarded connection and rejects new ones, as a stopped broker
//! would, while RabbitMQ keeps serving other tests.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Where RabbitMQ listens for AMQP.
const RABBITMQ_ADDRESS: &str = "127.0.0.1:5672";

/// A forwarder on a fixed loopback port.
pub struct BrokerLink {
    address: SocketAddr,
    /// The accept loop; dropping it drops the forwarded connections too.
    serving: JoinSet<()>,
}

impl BrokerLink {
    /// Starts forwarding from a free loopback port to RabbitMQ.
    pub async fn open() -> anyhow::Result<BrokerLink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let mut link = BrokerLink {
            address,
            serving: JoinSet::new(),
        };
        link.serve(listener);
        Ok(link)
    }

    /// Returns an AMQP URL through the forwarder, for the local RabbitMQ's
    /// guest user and `vhost`.
    pub fn amqp_url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@{}/{vhost}", self.address)
    }

    /// Closes every forwarded connection and stops accepting new ones.
    pub async fn cut(&mut self) {
        self.serving.shutdown().await;
    }

    /// Accepts connections on the same port again.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.address)
            .await
            .with_context(|| format!("cannot listen on {} again", self.address))?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        self.serving.spawn(async move {
            let mut forwarded = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                forwarded.spawn(async move {
                    if let Ok(mut broker) = TcpStream::connect(RABBITMQ_ADDRESS).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
        });
    }
}
