using System.Runtime.InteropServices;
using System.Text;

using Microsoft.Win32.SafeHandles;

namespace QLoRA.Cli;

/// <summary>
/// Keeps stdout for the tool's own output: the process's file descriptor 1 is pointed at stderr, and
/// <see cref="Console.Out"/> writes to a private duplicate of the original stdout. Whatever native code prints
/// (libtorch warnings, OpenMP, a library's printf) lands on stderr, so `--json` output stays exactly one line that a
/// script can parse. Unix only; elsewhere (or if the descriptors cannot be duplicated) nothing changes.
/// </summary>
internal static class StdoutGuard
{
    private const int F_SETFD = 2, FD_CLOEXEC = 1;

    [DllImport("libc", SetLastError = true)]
    private static extern int dup(int fd);

    [DllImport("libc", SetLastError = true)]
    private static extern int dup2(int oldFd, int newFd);

    [DllImport("libc", SetLastError = true)]
    private static extern int fcntl(int fd, int cmd, int arg);

    [DllImport("libc", SetLastError = true)]
    private static extern int close(int fd);

    /// <summary>Installs the guard (once, before anything native runs).</summary>
    public static void Install()
    {
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())) return;
        Console.Out.Flush();
        int saved = dup(1);
        if (saved < 0) return;                                   // no stdout at all: leave things alone
        fcntl(saved, F_SETFD, FD_CLOEXEC);                       // child processes (npm) do not inherit it
        if (dup2(2, 1) < 0)
        {
            close(saved);
            return;
        }
        var stream = new FileStream(new SafeFileHandle(saved, ownsHandle: true), FileAccess.Write, bufferSize: 0);
        var writer = new StreamWriter(stream, new UTF8Encoding(false), bufferSize: 4096) { AutoFlush = true };
        Console.SetOut(TextWriter.Synchronized(writer));
    }
}
