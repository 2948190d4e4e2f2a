using System.Runtime.InteropServices;

using TorchSharp;

namespace QLoRA.Tests;

public class TorchRuntimeTests
{
    [DllImport("libc", EntryPoint = "getenv")]
    private static extern IntPtr getenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name);

    [Test]
    public void LoadsLibTorchAndRunsAnOp()
    {
        var info = TorchRuntime.EnsureLoaded();
        Assert.That(info.LibTorchVersion, Does.StartWith("2.10"));
        Assert.That(info.IntraOpThreads, Is.EqualTo(Environment.ProcessorCount));
        if (OperatingSystem.IsLinux())
        {
            Assert.That(info.NativeLibraryPath, Does.EndWith("libLibTorchSharp.so"));
            // The native environment (what libgomp reads), not only .NET's copy of it.
            Assert.That(Marshal.PtrToStringUTF8(getenv("OMP_WAIT_POLICY")), Is.EqualTo(info.OmpWaitPolicy));
        }

        // A small matmul checked against a float64 computation done here.
        var rng = new Random(7);
        double[,] a = new double[3, 4], b = new double[4, 2];
        for (int i = 0; i < 3; i++) for (int k = 0; k < 4; k++) a[i, k] = rng.NextDouble() * 2 - 1;
        for (int k = 0; k < 4; k++) for (int j = 0; j < 2; j++) b[k, j] = rng.NextDouble() * 2 - 1;
        using var ta = torch.tensor(a.Cast<double>().Select(x => (float)x).ToArray(), [3, 4]);
        using var tb = torch.tensor(b.Cast<double>().Select(x => (float)x).ToArray(), [4, 2]);
        using var tc = torch.matmul(ta, tb);
        float[] c = tc.data<float>().ToArray();
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++)
            {
                double expect = 0;
                for (int k = 0; k < 4; k++) expect += (float)a[i, k] * (double)(float)b[k, j];
                Assert.That(c[i * 2 + j], Is.EqualTo(expect).Within(1e-5), $"c[{i},{j}]");
            }
    }

    [Test]
    public void SecondCallReturnsTheFirstConfiguration()
    {
        var first = TorchRuntime.EnsureLoaded();
        var second = TorchRuntime.EnsureLoaded(intraOpThreads: 1);
        Assert.That(second, Is.SameAs(first));
    }

    [Test]
    public void RejectsBadThreadCounts()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => TorchRuntime.EnsureLoaded(intraOpThreads: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => TorchRuntime.EnsureLoaded(interOpThreads: 0));
    }
}
