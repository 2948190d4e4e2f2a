using System.Runtime.InteropServices;

namespace QLoRA.Cli;

/// <summary>
/// Ctrl-C (SIGINT) and SIGTERM for long work that can stop cleanly. Until <see cref="Arm"/> a signal ends the
/// process at once (nothing is worth saving yet). Once armed, the first signal only requests a stop
/// (<see cref="Token"/>): the work finishes its current step, writes a checkpoint and returns. A second signal ends
/// the process at once; checkpoints are written to a temporary folder and renamed into place, so the last
/// complete checkpoint survives that too.
/// </summary>
internal sealed class StopSignal : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration[] _registrations;
    private readonly Action<string> _say;
    private volatile string? _armedMessage;
    private int _signals;

    public StopSignal(Action<string> say)
    {
        _say = say;
        _registrations =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle),
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle),
        ];
    }

    /// <summary>Signalled by the first Ctrl-C after <see cref="Arm"/>.</summary>
    public CancellationToken Token => _cts.Token;

    /// <summary>True once a stop was requested.</summary>
    public bool Requested => _cts.IsCancellationRequested;

    /// <summary>From now on the first signal requests a stop; <paramref name="message"/> tells the user what follows.</summary>
    public void Arm(string message) => _armedMessage = message;

    private void Handle(PosixSignalContext context)
    {
        string? armed = _armedMessage;
        if (armed is null)
        {
            _say("qlora: interrupted before the first training step; nothing to save");
            return;                                   // not cancelled: the default action ends the process
        }
        if (Interlocked.Increment(ref _signals) == 1)
        {
            context.Cancel = true;
            _say($"qlora: {armed} (Ctrl-C again to quit at once)");
            _cts.Cancel();
            return;
        }
        _say("qlora: quitting at once; the last complete checkpoint is kept (--resume continues from it)");
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}
