using System.Diagnostics;

namespace QLoRA;

/// <summary>
/// An exclusive lock on a file (an exclusive open: flock on Unix, a sharing lock on Windows), held until disposed and
/// released by the operating system if the holder dies, so a lock is never left stale. Guards folders that several
/// processes may write at once: the download cache, a fine-tuning run's output folder.
/// </summary>
public sealed class FileLock : IDisposable
{
    private readonly FileStream _file;

    private FileLock(FileStream file) => _file = file;

    /// <summary>The lock file.</summary>
    public string Path => _file.Name;

    /// <summary>Takes the lock at <paramref name="path"/> (the file is created if needed), or returns null when another holder has it.</summary>
    /// <exception cref="IOException">The file cannot be created or opened (not because another process holds it).</exception>
    public static FileLock? TryAcquire(string path)
    {
        try
        {
            return new FileLock(new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
        }
        catch (IOException e) when (HeldByAnother(e))
        {
            return null;
        }
    }

    /// <summary>
    /// Takes the lock at <paramref name="path"/>, waiting while another holder has it (calling <paramref name="onWait"/>
    /// once when the wait begins) for at most <paramref name="timeout"/>.
    /// </summary>
    /// <exception cref="IOException">Still held after the timeout, or the file cannot be opened.</exception>
    public static FileLock Acquire(string path, TimeSpan timeout, Action? onWait = null)
    {
        var waited = Stopwatch.StartNew();
        bool told = false;
        while (true)
        {
            if (TryAcquire(path) is { } held) return held;
            if (waited.Elapsed >= timeout)
                throw new IOException($"{path}: still locked by another process after {timeout.TotalMinutes:F0} minutes; " +
                                      "if no other qlora process is running, delete the file and retry");
            if (!told)
            {
                onWait?.Invoke();
                told = true;
            }
            Thread.Sleep(200);
        }
    }

    // Another holder has it (EWOULDBLOCK from flock on Linux / macOS; a sharing violation on Windows), as opposed to
    // an error that waiting cannot cure (a read-only folder, a full disk).
    private static bool HeldByAnother(IOException e) =>
        e.HResult == (OperatingSystem.IsMacOS() ? 35 : 11) || e.HResult == unchecked((int)0x80070020);

    /// <summary>Releases the lock (the file stays).</summary>
    public void Dispose() => _file.Dispose();
}
