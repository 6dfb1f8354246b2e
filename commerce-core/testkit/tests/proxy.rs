//! The fault-injecting proxy does what the tests that use it rely on, against a real Redis.

use std::time::Duration;

use commerce_testkit::{PrivateRedis, TcpProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn ping(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"PING\r\n").await?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test]
async fn forwards_black_holes_delays_and_cuts() {
    let redis = PrivateRedis::start().await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port())).await;
    let mut client = TcpStream::connect(proxy.address()).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG\r\n");

    // Black hole: no reply, no error; the reply arrives once it is lifted.
    proxy.black_hole();
    let held = tokio::time::timeout(Duration::from_millis(300), ping(&mut client)).await;
    assert!(held.is_err(), "a black-holed request got an answer");
    proxy.forward();
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut reply))
        .await
        .expect("held reply after the black hole")
        .unwrap();
    assert_eq!(&reply, b"+PONG\r\n");

    // Delay: the server acts at once, the client hears later.
    proxy.delay_replies(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG\r\n");
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.forward();

    // Cut: the request reaches the server, the client gets no reply but a closed connection.
    proxy.cut_after(b"INCR");
    client.write_all(b"INCR cut-counter\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest))
        .await
        .expect("the cut connection closes");
    assert!(
        read.is_err() || rest.is_empty(),
        "a reply got through: {rest:?}"
    );
    let mut direct = TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .unwrap();
    direct.write_all(b"GET cut-counter\r\n").await.unwrap();
    let mut value = [0u8; 7];
    direct.read_exact(&mut value).await.unwrap();
    assert_eq!(&value, b"$1\r\n1\r\n", "the cut request was executed once");

    // A new connection works normally again.
    let mut again = TcpStream::connect(proxy.address()).await.unwrap();
    assert_eq!(ping(&mut again).await.unwrap(), "+PONG\r\n");
    proxy.close_all();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), again.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "close_all left the connection open");
}

/// A server that answers and closes at once (HTTP's `Connection: close`) is heard in full:
/// the reply is delivered before the close (it was lost about every time: the server's end
/// cancelled the relay before its last chunk was written).
#[tokio::test]
async fn a_reply_followed_by_the_server_closing_arrives_whole() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello".to_vec();
    let server = {
        let reply = reply.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 64];
                let _ = socket.read(&mut request).await;
                socket.write_all(&reply).await.unwrap();
                // Closed right after the answer.
                drop(socket);
            }
        })
    };
    let proxy = TcpProxy::start(upstream).await;
    for attempt in 0..50 {
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut heard = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut heard))
            .await
            .expect("the connection closes")
            .unwrap();
        assert_eq!(heard, reply, "attempt {attempt}: the reply was cut short");
    }
    server.abort();
}

/// `down`: the open connection ends, a new one is reset at once, and after `forward` a new
/// connection reaches the same server with what it held (it never stopped).
#[tokio::test]
async fn down_ends_every_connection_until_forward_and_the_server_keeps_its_state() {
    let redis = PrivateRedis::start().await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port())).await;
    let mut before = TcpStream::connect(proxy.address()).await.unwrap();
    before.write_all(b"SET down kept\r\n").await.unwrap();
    let mut ok = [0u8; 5];
    before.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");

    proxy.down();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(2), before.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "down left the open connection open");
    for _ in 0..3 {
        let refused = match TcpStream::connect(proxy.address()).await {
            Err(_) => true,
            Ok(mut stream) => tokio::time::timeout(Duration::from_secs(2), ping(&mut stream))
                .await
                .is_ok_and(|answer| answer.is_err()),
        };
        assert!(refused, "a connection went through while down");
    }

    proxy.forward();
    let mut after = TcpStream::connect(proxy.address()).await.unwrap();
    assert_eq!(ping(&mut after).await.unwrap(), "+PONG\r\n");
    after.write_all(b"GET down\r\n").await.unwrap();
    let mut value = [0u8; 10];
    after.read_exact(&mut value).await.unwrap();
    assert_eq!(&value, b"$4\r\nkept\r\n");
}
