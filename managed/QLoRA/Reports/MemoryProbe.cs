using System.Globalization;
using System.Runtime.InteropServices;

namespace QLoRA.Reports;

/// <summary>
/// Measured memory of this process (Linux): resident set (VmRSS) and its high-water mark (VmHWM) from
/// /proc/self/status, resetting the high-water mark (/proc/self/clear_refs), and the bytes of the C heap in use
/// (glibc mallinfo2: where libtorch's CPU tensors and the native core's buffers live). Every figure is -1 where
/// the platform does not provide it.
/// </summary>
public static class MemoryProbe
{
    /// <summary>VmRSS in bytes (-1 off Linux).</summary>
    public static long Resident() => Status("VmRSS");

    /// <summary>VmHWM in bytes: the peak resident set since the process started or <see cref="ResetPeak"/> (-1 off Linux).</summary>
    public static long PeakResident() => Status("VmHWM");

    /// <summary>
    /// Restarts VmHWM at the current resident set (writes "5" to /proc/self/clear_refs, Linux 4.0+). Returns false
    /// where that is not possible (the peak then keeps counting from the process start).
    /// </summary>
    public static bool ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            return false;
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2 mallinfo2();

    private static bool s_noMallinfo;

    /// <summary>Bytes of the C heap in use: allocated small blocks of every arena plus mmap'd blocks (-1 without glibc).</summary>
    public static long HeapInUse()
    {
        if (s_noMallinfo || !OperatingSystem.IsLinux()) return -1;
        try
        {
            var m = mallinfo2();
            return (long)(m.Uordblks + m.Hblkhd);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            s_noMallinfo = true;   // musl, or a glibc older than 2.33
            return -1;
        }
    }

    /// <summary>A field of /proc/self/status in bytes (its values are in kB), or -1.</summary>
    public static long Status(string field)
    {
        const string path = "/proc/self/status";
        if (!File.Exists(path)) return -1;
        foreach (string line in File.ReadLines(path))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        return -1;
    }
}
