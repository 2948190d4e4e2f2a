using QLoRA.Native.Interop;

namespace QLoRA.Native.Tests;

public sealed class QLoraContextTests
{
    [Test]
    public void CreateUseFree_RoundTrip()
    {
        QLoraContext ctx = QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Ref });
        Assert.Multiple(() =>
        {
            Assert.That(ctx.Backend, Is.EqualTo(QLoraBackend.Ref));
            Assert.That(ctx.Isa, Is.EqualTo(QLoraCpuIsa.Scalar));
            Assert.That(ctx.Threads, Is.EqualTo(1), "the reference backend is single-threaded");
            Assert.That(ctx.Handle.IsInvalid, Is.False);
        });
        // Use: a native call through the handle.
        var absmax = new float[2];
        Q8Blockwise.Quantize(ctx, Oracle.Normal(512, 1), 256, new byte[512], absmax);
        Assert.That(absmax, Is.All.GreaterThan(0f));
        ctx.Dispose();
        Assert.That(ctx.Handle.IsClosed);
        Assert.Throws<ObjectDisposedException>(() => ctx.Handle.Lease().Dispose());
        Assert.Throws<ObjectDisposedException>(() => Q8Blockwise.Quantize(ctx, Oracle.Normal(512, 1), 256, new byte[512], new float[2]));
        ctx.Dispose(); // idempotent
    }

    [Test]
    public void CpuContext_ResolvesThreadsAndIsa()
    {
        using QLoraContext best = QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cpu, Threads = 3 });
        using QLoraContext scalar = QLoraContext.Create(new QLoraContextOptions { MaxIsa = QLoraCpuIsa.Scalar });
        Assert.Multiple(() =>
        {
            Assert.That(best.Backend, Is.EqualTo(QLoraBackend.Cpu));
            Assert.That(best.Threads, Is.EqualTo(3));
            Assert.That(best.Isa, Is.EqualTo(QLoraContext.DetectedIsa));
            Assert.That(scalar.Backend, Is.EqualTo(QLoraBackend.Cpu), "Auto resolves to the CPU backend for host data");
            Assert.That(scalar.Isa, Is.EqualTo(QLoraCpuIsa.Scalar));
            Assert.That(QLoraContext.IsaName(QLoraCpuIsa.Avx512Bf16), Is.EqualTo("avx512_bf16"));
            Assert.That(QLoraContext.IsaName(QLoraCpuIsa.AmxBf16), Is.EqualTo("amx_bf16"));
            Assert.That(best.ToString(), Does.StartWith("QLoraContext(Cpu, "));
        });
    }

    [Test]
    public void UnavailableBackend_SurfacesTheNativeMessage()
    {
        var e = Assert.Throws<QLoraException>(() => QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cuda }));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Status, Is.EqualTo(QLoraStatus.ErrorUnsupported));
            Assert.That(e.NativeMessage, Is.EqualTo("qlora_context_create: the CUDA backend is not part of this build (configure with -DQLORA_CUDA=ON)"));
            Assert.That(e.Message, Is.EqualTo(e.NativeMessage + " (ErrorUnsupported)"));
        });
    }

    [Test]
    public void InvalidEnumValue_IsRejectedByTheCore()
    {
        var e = Assert.Throws<QLoraException>(() => QLoraContext.Create(new QLoraContextOptions { Backend = (QLoraBackend)42 }));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Status, Is.EqualTo(QLoraStatus.ErrorInvalidArgument));
            Assert.That(e.NativeMessage, Does.Contain("unknown backend value 42"));
        });
    }

    [Test]
    public void NegativeThreads_AreRejectedInManagedCode()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => QLoraContext.Create(new QLoraContextOptions { Threads = -1 }));
        Assert.That(e!.ParamName, Is.EqualTo("options"));
    }

    [Test]
    public void ErrorMessage_IsPerThread_AndReadRightAfterTheFailingCall()
    {
        // A failure on another thread must not change the message this thread reports.
        string? other = null;
        var thread = new Thread(() =>
        {
            try { QLoraContext.Create(new QLoraContextOptions { Backend = (QLoraBackend)7 }); }
            catch (QLoraException e) { other = e.NativeMessage; }
        });
        var mine = Assert.Throws<QLoraException>(() => QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cuda }));
        thread.Start();
        thread.Join();
        Assert.Multiple(() =>
        {
            Assert.That(other, Does.Contain("unknown backend value 7"));
            Assert.That(mine!.NativeMessage, Does.Contain("CUDA backend"));
        });
    }

    [Test]
    public void SafeHandle_WithoutNativeHandle_CannotBeLeased()
    {
        using var empty = new QLoraContextSafeHandle();
        Assert.Throws<InvalidOperationException>(() => empty.Lease().Dispose());
    }

    [Test]
    public void Versions_MatchTheBindings()
    {
        Assert.Multiple(() =>
        {
            Assert.That(QLoraContext.NativeAbiVersion, Is.EqualTo(QLoraConstants.AbiVersion));
            Assert.That(QLoraContext.NativeVersion, Does.Match(@"^\d+\.\d+\.\d+"));
        });
    }
}
