using System.Globalization;

namespace QLoRA.Training;

/// <summary>
/// A test hook of the checkpoint writer (tests/QLoRA.Tests CrashSafetyTests): with the environment variable
/// <c>QLORA_TEST_CHECKPOINT_PAUSE_MS</c> = N (1..10000), the writer announces each phase of a checkpoint write on
/// stderr (<c>qlora-test: checkpoint PHASE step N</c>) and sleeps N ms after it, so a SIGKILL sent on seeing the
/// line lands in the middle of the write. Unset (always, outside that test), it does nothing.
/// </summary>
internal static class CrashTestHook
{
    private static readonly int PauseMs =
        int.TryParse(Environment.GetEnvironmentVariable("QLORA_TEST_CHECKPOINT_PAUSE_MS"), NumberStyles.None, CultureInfo.InvariantCulture, out int ms)
            ? Math.Clamp(ms, 0, 10000) : 0;

    public static void Phase(string phase, long step)
    {
        if (PauseMs == 0) return;
        Console.Error.WriteLine($"qlora-test: checkpoint {phase} step {step}");
        Console.Error.Flush();
        Thread.Sleep(PauseMs);
    }
}
