using System.Runtime.InteropServices;

namespace QLoRA.Native.Interop;

/// <summary>
/// Base of every owning handle of the native core. Each generated subclass (one per
/// <c>qlora_x_t</c> that has a <c>*_free</c>) releases its handle with that function exactly once,
/// even if the owner forgets to dispose it, and never while a <see cref="HandleLease{T}"/> on it is
/// alive: disposing during a native call defers the free until the call's lease is released.
/// </summary>
/// <remarks>
/// New handle types need no hand-written code here: BindingGen generates the subclass
/// (with <c>Lease()</c>, <c>Attach(raw)</c> and <c>Free</c>) from the header.
/// </remarks>
public abstract class QLoraSafeHandle : SafeHandle
{
    private SafeHandle? _parent;

    /// <summary>Creates an empty handle; a generated <c>Attach(raw)</c> gives it ownership of a native one.</summary>
    protected QLoraSafeHandle() : base(IntPtr.Zero, ownsHandle: true)
    {
    }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Calls the native free function of this handle type.</summary>
    protected abstract void Free(nint raw);

    /// <inheritdoc/>
    protected sealed override bool ReleaseHandle()
    {
        try
        {
            Free(handle);
        }
        finally
        {
            _parent?.DangerousRelease();
            _parent = null;
        }
        return true;
    }

    /// <summary>Adds a reference and returns the raw pointer; the caller must call <see cref="SafeHandle.DangerousRelease"/>.</summary>
    /// <exception cref="ObjectDisposedException">The handle was disposed.</exception>
    protected nint AddRef()
    {
        if (IsInvalid && !IsClosed) throw new InvalidOperationException($"{GetType().Name} does not own a native handle yet");
        ObjectDisposedException.ThrowIf(IsClosed, this);
        bool added = false;
        DangerousAddRef(ref added); // also throws ObjectDisposedException if closed meanwhile
        return handle;
    }

    /// <summary>Takes ownership of <paramref name="raw"/>, optionally keeping <paramref name="parent"/> alive until it is freed.</summary>
    protected void TakeOwnership(nint raw, SafeHandle? parent)
    {
        if (raw == IntPtr.Zero) throw new ArgumentException("the native call returned a NULL handle", nameof(raw));
        if (!IsInvalid || IsClosed) throw new InvalidOperationException($"{GetType().Name} already owns a handle or was disposed");
        if (parent is not null)
        {
            bool added = false;
            parent.DangerousAddRef(ref added);
            _parent = parent;
        }
        SetHandle(raw);
    }
}

/// <summary>
/// A reference on a <see cref="QLoraSafeHandle"/> held for the duration of native calls:
/// <c>using var ctx = context.Handle.Lease(); NativeMethods.qlora_x(ctx.Value, ...);</c>.
/// While it lives, the native object cannot be freed, even by a concurrent Dispose.
/// </summary>
/// <typeparam name="T">The raw handle struct passed to <see cref="NativeMethods"/>.</typeparam>
public readonly ref struct HandleLease<T> where T : unmanaged
{
    private readonly SafeHandle _owner;

    /// <summary>Wraps a reference the caller already added on <paramref name="owner"/>.</summary>
    public HandleLease(SafeHandle owner, T value)
    {
        _owner = owner;
        Value = value;
    }

    /// <summary>The raw handle, valid until the lease is disposed.</summary>
    public T Value { get; }

    /// <summary>Releases the reference.</summary>
    public void Dispose() => _owner?.DangerousRelease();
}
