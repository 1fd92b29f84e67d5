// Open this folder in Android Studio. :core is plain Kotlin (policy, tokenizer, scheduler loop, JSON)
// tested on the JVM against ../edgekit/twin_vectors; :app is the Android glue (LiteRT, PowerManager,
// BatteryManager).
plugins {
    id("com.android.application") version "8.5.2" apply false
    id("org.jetbrains.kotlin.android") version "1.9.24" apply false
    id("org.jetbrains.kotlin.jvm") version "1.9.24" apply false
}
