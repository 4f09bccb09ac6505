//! The ordered two-thread pipeline the ASCII STL reader and the text writers share.
//!
//! Both have work that splits into independent jobs (parsing a block of lines, formatting a
//! piece of output) between steps that must run one after the other in order (cutting the
//! input into blocks, applying them to the mesh; writing the pieces out). The jobs run on a
//! helper thread and on the calling thread, whichever is free (the machine may have two cores
//! only, and others may be using them), and are finished on the calling thread in order.

use std::collections::VecDeque;
use std::sync::mpsc;

use super::error::MeshError;

/// How far the calling thread may get ahead of the job it finishes next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ahead {
    /// Jobs made and not yet finished, at most (each is memory).
    pub(crate) in_flight: usize,
    /// Jobs waiting for the helper thread, at most: with 0 a job goes to the helper only when
    /// it is idle, and is otherwise done by the calling thread.
    pub(crate) waiting: usize,
}

/// Makes jobs with `make`, runs `work` on each (here or on a helper thread) and `finish`es
/// them here, in the order they were made: the result is that of doing them one after the
/// other. `make` fills a job (a recycled one, or a new default) and says whether there was
/// one to make; the first error of `make` or `finish` stops everything and is returned.
/// `who` names the helper thread in the error reported if it stops (a bug: it cannot fail).
pub(crate) fn ordered<J, Make, Work, Finish>(
    ahead: Ahead,
    who: &'static str,
    mut make: Make,
    work: Work,
    mut finish: Finish,
) -> Result<(), MeshError>
where
    J: Default + Send,
    Make: FnMut(&mut J) -> Result<bool, MeshError>,
    Work: Fn(&mut J) + Sync,
    Finish: FnMut(&J) -> Result<(), MeshError>,
{
    std::thread::scope(|scope| {
        let work = &work;
        let (to_helper, jobs) = mpsc::sync_channel::<J>(ahead.waiting);
        let (done, from_helper) = mpsc::channel::<J>();
        // Ends once `to_helper` is dropped, when this function returns, error or not.
        scope.spawn(move || {
            for mut job in jobs {
                work(&mut job);
                if done.send(job).is_err() {
                    break;
                }
            }
        });
        let gone = || MeshError::from(std::io::Error::other(format!("{who} thread stopped")));
        // Jobs in order: done (`Some`) or with the helper (`None`; the helper returns jobs in
        // the order it gets them).
        let mut queue: VecDeque<Option<J>> = VecDeque::with_capacity(ahead.in_flight + 1);
        let mut spare: Vec<J> = Vec::new();
        let mut more = true;
        loop {
            // Finish what is done, in order.
            while let Some(front) = queue.front_mut() {
                if front.is_none() {
                    match from_helper.try_recv() {
                        Ok(job) => *front = Some(job),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return Err(gone()),
                    }
                }
                if let Some(job) = queue.pop_front().flatten() {
                    finish(&job)?;
                    spare.push(job);
                }
            }
            if !more && queue.is_empty() {
                return Ok(());
            }
            if !more || queue.len() >= ahead.in_flight {
                // Wait for the oldest job the helper has.
                if let Some(front @ None) = queue.front_mut() {
                    *front = Some(from_helper.recv().map_err(|_| gone())?);
                }
                continue;
            }
            let mut job = spare.pop().unwrap_or_default();
            if !make(&mut job)? {
                more = false;
                continue;
            }
            match to_helper.try_send(job) {
                Ok(()) => queue.push_back(None),
                Err(mpsc::TrySendError::Full(mut job)) => {
                    work(&mut job);
                    queue.push_back(Some(job));
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs finish in order and each once, however far ahead and whoever does them.
    #[test]
    fn jobs_finish_in_order() {
        for in_flight in 1..5 {
            for waiting in 0..3 {
                let mut next = 0u32;
                let mut finished = Vec::new();
                ordered(
                    Ahead { in_flight, waiting },
                    "test",
                    |job: &mut (u32, u32)| {
                        next += 1;
                        *job = (next, 0);
                        Ok(next <= 500)
                    },
                    |job| job.1 = job.0 * 2,
                    |job| {
                        finished.push(*job);
                        Ok(())
                    },
                )
                .expect("no job fails");
                let expected: Vec<(u32, u32)> = (1..=500).map(|i| (i, i * 2)).collect();
                assert_eq!(
                    finished, expected,
                    "{in_flight} in flight, {waiting} waiting"
                );
            }
        }
    }

    /// The first error stops the pipeline and is the one returned.
    #[test]
    fn the_first_error_stops_it() {
        let mut made = 0u32;
        let mut finished = 0u32;
        let result = ordered(
            Ahead {
                in_flight: 3,
                waiting: 1,
            },
            "test",
            |job: &mut u32| {
                made += 1;
                *job = made;
                Ok(true)
            },
            |_| {},
            |&job| {
                finished += 1;
                if job == 10 {
                    return Err(MeshError::from(std::io::Error::other("job 10")));
                }
                Ok(())
            },
        );
        assert!(result.is_err_and(|e| e.to_string().contains("job 10")));
        assert_eq!(finished, 10);
    }
}
