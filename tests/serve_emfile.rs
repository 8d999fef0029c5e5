//! `serve_tcp` backs off and retries when `accept` runs out of descriptors (S9.4).
//!
//! One test in its own binary: it lowers the process's descriptor limit, which would disturb
//! tests running beside it.

use std::io::Read;
use std::time::Duration;

use hatchery::net::{TcpStream, serve_tcp};
use hatchery::testing;
use hatchery::{Error, Instant, now, nursery, sleep};
use rustix::process::{Resource, getrlimit, setrlimit};

/// The descriptor the next `open` would get: the lowest free one.
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/dev/null").unwrap();
    f.as_raw_fd() as u64
}

#[test]
fn accept_out_of_descriptors_is_retried_every_100_ms() {
    let original = getrlimit(Resource::Nofile);
    let accepted_at = testing::run(async {
        let accepted_at = std::cell::Cell::new(None);
        nursery(async |n| {
            let addr = n
                .start(|status| {
                    serve_tcp(
                        ([127, 0, 0, 1], 0),
                        async |conn: TcpStream| {
                            accepted_at.set(Some(now()));
                            conn.write_all(b"hi").await?;
                            Ok::<_, Error>(())
                        },
                        status,
                    )
                })
                .await?;
            // The connection is queued by the kernel; accepting it needs a descriptor.
            let mut client = std::net::TcpStream::connect(addr)?;
            let mut tight = original;
            tight.current = Some(lowest_free_fd());
            setrlimit(Resource::Nofile, tight).map_err(std::io::Error::from)?;
            sleep(Duration::from_millis(250)).await?;
            setrlimit(Resource::Nofile, original).map_err(std::io::Error::from)?;
            // Accepts at t=0, 100 and 200 failed with EMFILE; the one at t=300 works.
            testing::wait_all_tasks_blocked().await?;
            while accepted_at.get().is_none() {
                sleep(Duration::from_millis(10)).await?;
            }
            let mut buf = [0; 2];
            client.read_exact(&mut buf)?;
            assert_eq!(&buf, b"hi");
            n.cancel_scope().cancel();
            Ok::<_, Error>(())
        })
        .await?;
        Ok::<_, Error>(accepted_at.get())
    });
    setrlimit(Resource::Nofile, original).unwrap();
    assert_eq!(accepted_at.unwrap(), Some(Instant::ZERO + Duration::from_millis(300)));
}
